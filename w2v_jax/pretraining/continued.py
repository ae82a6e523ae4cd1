"""Continued pretraining: a pretraining run that starts from a checkpoint (`config.init`).

- `continued_model_config`: the source's architecture (`config.ARCHITECTURE_FIELDS`) + the run
  config's training fields (`config.TRAINING_FIELDS`: dropouts, masking, negatives, loss weights...).
- `architecture_differences`: the architecture fields the source sets differently from the run
  config's `model` section (one line at the start of the run).
- `source_parameters`: the parameters a fresh run starts from: all of a `Wav2Vec2ForPreTraining`
  source's (encoder, mask embedding, quantizer codevectors and projection, `project_q`,
  `project_hid`); with `config.init_fresh_heads` the encoder alone, the heads fresh. A source
  without the pretraining heads (`Wav2Vec2Model`, a CTC model) is refused without that field.

The update counter, the optimizer and the Gumbel temperature's schedule start fresh: they are the
run config's (`train.*`), from step 0. A resumed run reads its own checkpoints and its stored model
config (`run_layout.MODEL_CONFIG_FILE`), never the source (`task.PretrainingTask`).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
from flax import nnx

from w2v_jax.checkpoints.weights import Model, ParamPath
from w2v_jax.config import ARCHITECTURE_FIELDS, TRAINING_FIELDS, Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining, Wav2Vec2Model

# The run config's field that starts the pretraining heads fresh (needed over a source that lacks them).
FRESH_HEADS_FIELD = "init_fresh_heads"
# Where a source's encoder goes in `Wav2Vec2ForPreTraining` (the heads are everything else).
ENCODER_PATH: ParamPath = ("wav2vec2",)


def _section_config(model_section: ml_collections.ConfigDict) -> Wav2Vec2Config:
    values = model_section.to_dict()
    unknown = set(values) - {f.name for f in dataclasses.fields(Wav2Vec2Config)}
    if unknown:
        raise ValueError(f"unknown Wav2Vec2Config fields in the run config's model section: {sorted(unknown)}")
    return Wav2Vec2Config(**values)


def continued_model_config(model_section: ml_collections.ConfigDict, source: Wav2Vec2Config) -> Wav2Vec2Config:
    """The continued run's model: `source`'s architecture, the run config's training fields.

    Args:
      model_section: the run config's `model` (all `Wav2Vec2Config` fields).
      source: the source checkpoint's config.
    """
    section = _section_config(model_section)
    return source.replace(**{name: getattr(section, name) for name in TRAINING_FIELDS})


def architecture_differences(model_section: ml_collections.ConfigDict, source: Wav2Vec2Config) -> list[str]:
    """`field: config's -> source's` for each architecture field the source sets differently."""
    section = _section_config(model_section)
    return [
        f"{name}: {getattr(section, name)!r} -> {getattr(source, name)!r}"
        for name in ARCHITECTURE_FIELDS
        if getattr(section, name) != getattr(source, name)
    ]


def source_parameters(model: Model, path: str | os.PathLike, *, fresh_heads: bool) -> tuple[nnx.State, ParamPath]:
    """The parameters a continued run takes from a source model, and where they go in
    `Wav2Vec2ForPreTraining` (`()`: every parameter; `ENCODER_PATH`: the encoder, the heads fresh).

    Args:
      model: the source (`checkpoints.load_model`).
      path: its path, for messages.
      fresh_heads: the run config's `init_fresh_heads`: the source gives its encoder alone;
        without it the source must have the heads and gives every parameter.

    Raises:
      ValueError: a source without the heads and no `fresh_heads` (one line naming the field).
    """
    if not fresh_heads:
        if isinstance(model, Wav2Vec2ForPreTraining):
            return nnx.state(model, nnx.Param), ()
        raise ValueError(
            f"{path} holds a {type(model).__name__}, without the pretraining heads (quantizer, project_q, "
            f"project_hid): set --config.{FRESH_HEADS_FIELD}=True to start them fresh on its encoder"
        )
    encoder = model if isinstance(model, Wav2Vec2Model) else model.wav2vec2
    return nnx.state(encoder, nnx.Param), ENCODER_PATH
