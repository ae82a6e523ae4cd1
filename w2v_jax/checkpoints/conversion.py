"""Conversions between checkpoint formats: `convert(direction, source, destination)`.

- `hf-to-jax`: a transformers folder (`Wav2Vec2ForPreTraining`, `Wav2Vec2ForCTC` or `Wav2Vec2Model`:
  config.json + model.safetensors or pytorch_model.bin) -> our folder (config.json + params.safetensors);
- `jax-to-hf`: a training workdir (its newest checkpoint or `step`; a fine-tuning workdir's best
  model by default) or our folder -> a transformers folder that `from_pretrained`,
  `AutoFeatureExtractor` and the pipelines load.

A CTC model's vocabulary (vocab.json and the tokenizer's special tokens) goes with it both ways.
"""

from __future__ import annotations

import os
import pathlib

from w2v_jax.checkpoints import folder, hf
from w2v_jax.checkpoints.loading import load_model
from w2v_jax.training.checkpointer import has_checkpoints
from w2v_jax.training.workdir import CHECKPOINTS_DIR

DIRECTIONS = ("hf-to-jax", "jax-to-hf")


def convert(
    direction: str,
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    step: int | None = None,
    allow_nonfinite: bool = False,
) -> None:
    """Writes `source` in the other format at `destination` (see the module docstring).

    Args:
      direction: one of `DIRECTIONS`.
      source, destination: folders (`source` may be a training workdir for `jax-to-hf`).
      step: `jax-to-hf` from a training workdir: its checkpoint step.
      allow_nonfinite: convert weights holding NaN or infinity (refused by default).

    Raises:
      ValueError: an unknown direction, or `step` for a source that is not a training workdir.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    vocabulary = hf.load_vocabulary(source)
    if direction == "hf-to-jax":
        config, model = hf.load_hf_checkpoint(source, allow_nonfinite=allow_nonfinite)
        folder.save_checkpoint(config, model, destination, vocabulary=vocabulary)
    elif has_checkpoints(pathlib.Path(source) / CHECKPOINTS_DIR):
        model = load_model(source, step)  # training checkpoints are finite by construction
        hf.save_hf_checkpoint(model.config, model, destination, vocabulary=vocabulary)
    else:
        if step is not None:
            raise ValueError(f"--step applies to a training workdir (with {CHECKPOINTS_DIR}/), not {source}")
        config, model = folder.load_checkpoint(source, allow_nonfinite=allow_nonfinite)
        hf.save_hf_checkpoint(config, model, destination, vocabulary=vocabulary)
