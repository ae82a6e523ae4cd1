"""Per-utterance representations of a model for downstream use: `extract_representations(model, waveforms)`.

Also reachable from the model: `w2v_jax.checkpoints.load_model(path)` then
`model.features(waveforms, output_hidden_states=True)`.

Utterances of any lengths run without a compile per length: lengths are rounded to a fixed ladder
of bucket lengths (`bucket_length`, a factor 2**(1/4) apart), so a whole corpus compiles the forward
pass a handful of times, and a later call reuses those compiles. How an utterance meets its bucket
depends on the feature encoder's normalisation:

- layer-norm models (`feat_extract_norm="layer"`, LARGE): zero-padded up to the bucket with an
  attention mask, batched; exact, the real frames' features are those of the utterance alone.
- group-norm models ("group", BASE): GroupNorm normalises over all of a row's samples, so padding
  would change every frame. `group_norm="exact"` (default) runs each utterance alone at its own
  length (one compile per distinct length); `group_norm="crop"` crops it (from its start) to the
  largest bucket <= its length and batches equal buckets: no compile per length, at most 16% of
  the tail dropped, and the features are those of the cropped audio (fewer frames);
  `group_norm="masked"` zero-pads and batches them as layer-norm models, with the model's masked
  group norm (statistics over each utterance's real frames, `Wav2Vec2Model`'s `group_norm`): the
  features equal those of the utterance alone (to float rounding), without a compile per length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import audio
from w2v_jax.data.planning import geometric_lengths


class EncoderModel(Protocol):
    """A model with the shared encoder as `wav2vec2` (`Wav2Vec2ForPreTraining`, `Wav2Vec2ForCTC`)."""

    config: Wav2Vec2Config
    wav2vec2: Any

    def num_frames(self, num_samples: Any) -> Any: ...


# The conv stack's receptive field times 2**(k/4), k < 96 (up to ~98 h of audio): ~19% padding or
# ~16% crop at most.
_LADDER_STEPS = 96
BUCKET_LADDER = geometric_lengths(
    audio.RECEPTIVE_FIELD, round(audio.RECEPTIVE_FIELD * 2 ** ((_LADDER_STEPS - 1) / 4)), _LADDER_STEPS
)
GROUP_NORM_MODES = ("exact", "crop", "masked")


@dataclasses.dataclass(frozen=True)
class UtteranceRepresentation:
    """One utterance's representations (NumPy, float32).

    Attributes:
      last_hidden_state: `[frames, hidden]` the context network's output.
      extract_features: `[frames, conv_dim[-1]]` the layer-normalised conv features.
      hidden_states: with `output_hidden_states`, `num_hidden_layers + 1` arrays `[frames, hidden]`
        (the Transformer's input, then each layer's output; the model's `hidden_states`), else None.
      num_samples: the samples the features were computed from (fewer than given after a crop).
    """

    last_hidden_state: np.ndarray
    extract_features: np.ndarray
    hidden_states: tuple[np.ndarray, ...] | None
    num_samples: int


def bucket_length(num_samples: int, *, pad: bool) -> int:
    """The ladder length an utterance of `num_samples` runs at: the smallest >= it (pad) or the
    largest <= it (crop). ValueError under the receptive field (`BUCKET_LADDER[0]`)."""
    if num_samples < BUCKET_LADDER[0]:
        raise ValueError(
            f"an utterance needs at least {BUCKET_LADDER[0]} samples (the receptive field), got {num_samples}"
        )
    if pad:
        return int(BUCKET_LADDER[np.searchsorted(BUCKET_LADDER, num_samples, side="left")])
    return int(BUCKET_LADDER[np.searchsorted(BUCKET_LADDER, num_samples, side="right") - 1])


def _encode(
    model: EncoderModel,
    x: jnp.ndarray,
    attention_mask: jnp.ndarray | None,
    output_hidden_states: bool,
    group_norm: str,
):
    out = model.wav2vec2(
        x, attention_mask, deterministic=True, output_hidden_states=output_hidden_states, group_norm=group_norm
    )
    return out.last_hidden_state, out.extract_features, out.hidden_states


_forward = nnx.jit(_encode, static_argnames=("output_hidden_states", "group_norm"))


def _batches(lengths: np.ndarray, width_of: dict[int, int], batch_size: int) -> list[tuple[int, list[int]]]:
    """(width, utterance indices) groups: equal widths together, at most batch_size each."""
    groups: dict[int, list[int]] = {}
    for index in np.argsort(lengths, kind="stable").tolist():
        groups.setdefault(width_of[index], []).append(index)
    return [(w, rows[i : i + batch_size]) for w, rows in groups.items() for i in range(0, len(rows), batch_size)]


def extract_representations(
    model: EncoderModel,
    waveforms: Sequence[np.ndarray],
    *,
    output_hidden_states: bool = False,
    batch_size: int = 8,
    group_norm: str = "exact",
) -> list[UtteranceRepresentation]:
    """Runs the model's encoder (evaluation mode, no masking) on each waveform.

    Args:
      model: a model with the encoder as `wav2vec2` (`w2v_jax.checkpoints.load_model`).
      waveforms: float `[samples]` each, 16 kHz, normalised as in training (`data.audio.normalize`).
      output_hidden_states: also return every layer's hidden states.
      batch_size: rows per forward pass (a short batch is filled with empty rows).
      group_norm: "exact", "crop" or "masked", how group-norm models run (see the module docstring).

    Returns:
      one `UtteranceRepresentation` per waveform, in the given order.
    """
    if group_norm not in GROUP_NORM_MODES:
        raise ValueError(f"group_norm must be one of {GROUP_NORM_MODES}, got {group_norm!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for index, w in enumerate(waveforms):
        if np.ndim(w) != 1:
            raise ValueError(f"waveform {index} must be [samples], got shape {np.shape(w)}")
    lengths = np.asarray([len(w) for w in waveforms], np.int64)
    pad = model.config.feat_extract_norm == "layer" or group_norm == "masked"
    if pad or group_norm == "crop":
        width_of = {i: bucket_length(int(n), pad=pad) for i, n in enumerate(lengths)}
        rows = batch_size
    else:
        width_of = {i: int(n) for i, n in enumerate(lengths)}
        rows = 1
    results: dict[int, UtteranceRepresentation] = {}
    for width, indices in _batches(lengths, width_of, rows):
        x = np.zeros((rows, width), np.float32)
        mask = np.zeros((rows, width), np.int32)
        for slot, index in enumerate(indices):
            keep = min(int(lengths[index]), width)
            x[slot, :keep] = waveforms[index][:keep]
            mask[slot, :keep] = 1
        last, conv, hidden = _forward(
            model,
            jnp.asarray(x),
            jnp.asarray(mask) if pad else None,
            output_hidden_states,
            "masked" if group_norm == "masked" else "padded",
        )
        last, conv = np.asarray(last), np.asarray(conv)
        hidden = None if hidden is None else [np.asarray(h) for h in hidden]
        for slot, index in enumerate(indices):
            samples = min(int(lengths[index]), width)
            frames = int(model.num_frames(samples))
            results[index] = UtteranceRepresentation(
                last_hidden_state=last[slot, :frames],
                extract_features=conv[slot, :frames],
                hidden_states=None if hidden is None else tuple(h[slot, :frames] for h in hidden),
                num_samples=samples,
            )
    return [results[i] for i in range(len(waveforms))]
