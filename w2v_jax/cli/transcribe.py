"""Transcribes audio with a fine-tuned (CTC) checkpoint: one `path<TAB>text` line per utterance.

    python -m experiments.transcribe --checkpoint=runs/ft_tiny speech.flac other.wav
    python -m experiments.transcribe --checkpoint=runs/ft_tiny --step=200 data/valid.tsv

`--checkpoint` is a fine-tuning workdir (its best model by the validation metric; `--step` picks a
checkpoint), our folder format or a transformers `Wav2Vec2ForCTC` folder with its vocabulary.
Arguments are audio files or manifests (every row). Greedy CTC decoding, batched (layer-norm models
padded, group-norm models in batches of equal length), in the text transformers' ASR pipeline gives
(`--labels=phn`: phones separated by spaces, as in `.phn` files).
`--decoder=beam` decodes with beam search instead (`w2v_jax.asr.beam_search`), with an n-gram LM
(`--lm`, ARPA or KenLM binary) and a lexicon (`--lexicon`) or lexicon-free with a token LM:

    python -m experiments.transcribe --checkpoint=runs/ft_mini --decoder=beam \
        --lm=w2v_jax/data/corpus/lm/train_3gram.arpa --lexicon=w2v_jax/data/corpus/lm/train_3gram.lexicon.txt \
        --lm_weight=2 --word_score=1 data/valid.tsv

All logic: `w2v_jax.asr.transcription.transcribe_files`.
"""

import functools
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.asr.beam_search import DECODERS, make_decoder
from w2v_jax.asr.decoding import SEPARATORS
from w2v_jax.asr.transcription import transcribe_files
from w2v_jax.cli import beam_search_options, define_beam_search_flags, launch


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        checkpoint=flags.DEFINE_string(
            "checkpoint", None, "Fine-tuning workdir or CTC checkpoint folder.", required=True, flag_values=fv
        ),
        step=flags.DEFINE_integer(
            "step", None, "Checkpoint step of a workdir (default: its best model).", flag_values=fv
        ),
        batch_size=flags.DEFINE_integer("batch_size", 8, "Utterances per forward pass.", flag_values=fv),
        labels=flags.DEFINE_enum(
            "labels",
            "ltr",
            sorted(SEPARATORS),
            "The model's labels: ltr (letters joined) or phn (phones separated by spaces).",
            flag_values=fv,
        ),
        decoder=flags.DEFINE_enum(
            "decoder", "greedy", DECODERS, "greedy, or beam search (with --lm, --lexicon).", flag_values=fv
        ),
        **define_beam_search_flags(fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) < 2:
        raise app.UsageError("give audio files or manifests to transcribe")
    decoder = functools.partial(
        make_decoder,
        decoder=args.decoder.value,
        lm=args.lm.value,
        lexicon=args.lexicon.value,
        options=beam_search_options(args, args.lm_weight.value, args.word_score.value),
        separator=SEPARATORS[args.labels.value],
    )
    try:
        results = transcribe_files(
            args.checkpoint.value,
            argv[1:],
            step=args.step.value,
            batch_size=args.batch_size.value,
            separator=SEPARATORS[args.labels.value],
            decoder=decoder,
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    for path, text in results:
        print(f"{path}\t{text}")


def run() -> None:
    """The `w2v-transcribe` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
