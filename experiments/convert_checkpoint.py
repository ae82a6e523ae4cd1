"""Converts wav2vec 2.0 checkpoints (pretraining, CTC fine-tuned, bare encoder) between
transformers and w2v_jax.

    # a transformers Wav2Vec2ForPreTraining / Wav2Vec2ForCTC folder (config.json + model.safetensors or
    # pytorch_model.bin) -> a w2v_jax folder (config.json + params.safetensors)
    python -m experiments.convert_checkpoint hf-to-jax path/to/hf_folder path/to/jax_folder

    # a w2v_jax folder -> a folder `Wav2Vec2ForPreTraining.from_pretrained` loads
    python -m experiments.convert_checkpoint jax-to-hf path/to/jax_folder path/to/hf_folder

    # a fine-tuning workdir (its best model; --step=N a checkpoint) -> a folder that
    # `Wav2Vec2ForCTC.from_pretrained`, `Wav2Vec2Processor.from_pretrained` and
    # `pipeline("automatic-speech-recognition", model=...)` load
    python -m experiments.convert_checkpoint jax-to-hf runs/ft_tiny path/to/hf_folder

A CTC model's vocabulary (vocab.json and the tokenizer's special tokens) goes with it both ways.

All logic lives in `w2v_jax.convert`.
"""

import pathlib
from collections.abc import Sequence

from absl import app, flags

from w2v_jax import checkpointing, convert

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
    elif (pathlib.Path(source) / "checkpoints").is_dir():  # a training workdir
        model = checkpointing.load_model(source, step)
        convert.save_hf_checkpoint(model.config, model, destination, vocabulary=vocabulary)
    else:
        config, model = convert.load_checkpoint(source, allow_nonfinite=allow_nonfinite)
        convert.save_hf_checkpoint(config, model, destination, vocabulary=vocabulary)
    print(f"{direction}: {source} -> {destination}")


if __name__ == "__main__":
    app.run(lambda argv: main(argv[1:], allow_nonfinite=_ALLOW_NONFINITE.value, step=_STEP.value))
