"""Transcribes audio with a fine-tuned (CTC) checkpoint: one `path<TAB>text` line per utterance.

    python -m experiments.transcribe --checkpoint=runs/ft_tiny speech.flac other.wav
    python -m experiments.transcribe --checkpoint=runs/ft_tiny --step=200 data/valid.tsv

`--checkpoint` is a fine-tuning workdir (its best model by the validation metric; `--step` picks a
checkpoint), our folder format or a transformers `Wav2Vec2ForCTC` folder with its vocabulary.
Arguments are audio files or manifests (every row). Greedy CTC decoding, batched (layer-norm models
padded, group-norm models in batches of equal length), in the text transformers' ASR pipeline gives
(`--labels=phn`: phones separated by spaces, as in `.phn` files).
All logic: `w2v_jax.finetuning.transcribe_files`.
"""

from absl import app, flags

from w2v_jax import finetuning
from w2v_jax.cli import launch

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Fine-tuning workdir or CTC checkpoint folder.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of a workdir (default: its best model).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Utterances per forward pass.")
_LABELS = flags.DEFINE_enum("labels", "ltr", sorted(finetuning.SEPARATORS),
                            "The model's labels: ltr (letters joined) or phn (phones separated by spaces).")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError("give audio files or manifests to transcribe")
    try:
        results = finetuning.transcribe_files(_CHECKPOINT.value, argv[1:], step=_STEP.value,
                                              batch_size=_BATCH_SIZE.value,
                                              separator=finetuning.SEPARATORS[_LABELS.value])
    except ValueError as error:
        raise SystemExit(str(error)) from None
    for path, text in results:
        print(f"{path}\t{text}")


def run() -> None:
    """The `w2v-transcribe` command."""
    launch(main)


if __name__ == "__main__":
    run()
