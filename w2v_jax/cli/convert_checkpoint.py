"""Converts wav2vec 2.0 checkpoints (pretraining, CTC fine-tuned, bare encoder) between transformers and w2v_jax.

    # a transformers Wav2Vec2ForPreTraining folder (config.json + model.safetensors or
    # pytorch_model.bin) -> a w2v_jax folder (config.json + params.safetensors)
    python -m experiments.convert_checkpoint hf-to-jax path/to/hf_folder path/to/jax_folder

    # a training workdir (its newest checkpoint, or --step) or a w2v_jax folder -> a folder
    # transformers' `from_pretrained`, `AutoFeatureExtractor` and pipelines load
    python -m experiments.convert_checkpoint jax-to-hf runs/tiny path/to/hf_folder [--step=200]
    python -m experiments.convert_checkpoint jax-to-hf path/to/jax_folder path/to/hf_folder

A fine-tuning workdir exports its best model by default (`--step` picks a checkpoint), to a folder
that `Wav2Vec2ForCTC.from_pretrained`, `Wav2Vec2Processor.from_pretrained` and
`pipeline("automatic-speech-recognition", model=...)` load; a CTC model's vocabulary (vocab.json
and the tokenizer's special tokens) goes with it both ways.

All logic lives in `w2v_jax.convert` and `w2v_jax.checkpointing.load_model`.
"""

import pathlib
from collections.abc import Sequence

from absl import app, flags

from w2v_jax import checkpointing, convert
from w2v_jax.cli import launch

DIRECTIONS = ("hf-to-jax", "jax-to-hf")
_ALLOW_NONFINITE = flags.DEFINE_bool("allow_nonfinite", False, "Convert weights holding NaN or infinity (refused by default).")
_STEP = flags.DEFINE_integer("step", None, "jax-to-hf from a training workdir: its checkpoint step (default: "
                             "the best model of a fine-tuning run, else the newest checkpoint).")


def main(argv: Sequence[str], allow_nonfinite: bool = False, step: int | None = None) -> None:
    """`argv`: the arguments after the program name, `DIRECTION SOURCE DESTINATION`."""
    if len(argv) != 3 or argv[0] not in DIRECTIONS:
        raise SystemExit(f"usage: DIRECTION SOURCE DESTINATION with DIRECTION in {DIRECTIONS}; got {list(argv)}")
    direction, source, destination = argv
    vocabulary = convert.load_vocabulary(source)
    if direction == "hf-to-jax":
        config, model = convert.load_hf_checkpoint(source, allow_nonfinite=allow_nonfinite)
        convert.save_checkpoint(config, model, destination, vocabulary=vocabulary)
    elif checkpointing.has_checkpoints(pathlib.Path(source) / "checkpoints"):
        model = checkpointing.load_model(source, step)  # training checkpoints are finite by construction
        convert.save_hf_checkpoint(model.config, model, destination, vocabulary=vocabulary)
    else:
        if step is not None:
            raise SystemExit(f"--step applies to a training workdir (with checkpoints/), not {source}")
        config, model = convert.load_checkpoint(source, allow_nonfinite=allow_nonfinite)
        convert.save_hf_checkpoint(config, model, destination, vocabulary=vocabulary)
    print(f"{direction}: {source} -> {destination}")


def run() -> None:
    """The `w2v-convert-checkpoint` command."""
    launch(lambda argv: main(argv[1:], allow_nonfinite=_ALLOW_NONFINITE.value, step=_STEP.value))


if __name__ == "__main__":
    run()
