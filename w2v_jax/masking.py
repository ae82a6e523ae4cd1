"""Span masking of the latent frames (wav2vec 2.0, section 3.1).

A proportion `mask_prob` of the frames is sampled as span starts, without replacement, and each
start masks itself and the `mask_length - 1` frames after it; spans may overlap, so with
p = 0.65 and length 10 about 49% of the frames end up masked. Per utterance of `sz` unpadded
frames the number of spans is

    num_spans = max(min_masks, int(mask_prob * sz / mask_length + u)),   u ~ U[0, 1) per batch

(fairseq's probabilistic rounding, one `u` shared by the batch as in transformers'
`_compute_mask_indices`), capped so the spans fit: at most `time // mask_length` spans and at most
`sz - mask_length + 1` (the number of possible starts).

- `compute_mask_indices` samples in JAX from a key, inside jit, with static shapes: the train step
  needs no host-side preprocessing.
- `compute_mask_indices_numpy` is the NumPy oracle, the same algorithm as transformers', call for
  call on the same legacy NumPy generator, so the tests can compare it to transformers' own function
  draw for draw and the JAX sampler to both in distribution. One deliberate difference: transformers
  marks the last (padding) frame of a row too short for any span; padding is never masked here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def check_mask_arguments(shape: tuple[int, int], mask_prob: float, mask_length: int, min_masks: int) -> tuple[int, int]:
    """Eager checks of the samplers' arguments (a ValueError naming the problem); returns (batch, time)."""
    if len(shape) != 2:
        raise ValueError(f"shape must be (batch, time), got {shape}")
    batch, time = (int(s) for s in shape)
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    if mask_length > time:
        raise ValueError(
            f"mask_length={mask_length} is longer than the {time} frames of the input: use longer audio "
            "or a shorter mask_time_length"
        )
    if min_masks < 0:
        raise ValueError(f"min_masks must be >= 0, got {min_masks}")
    if min_masks > time // mask_length:
        raise ValueError(
            f"min_masks={min_masks} spans of length {mask_length} can't fit in {time} frames "
            f"(at most {time // mask_length}): use longer audio or lower mask_time_min_masks"
        )
    return batch, time


def _check_lengths(frame_lengths: jax.Array | np.ndarray, batch: int, time: int) -> None:
    if tuple(frame_lengths.shape) != (batch,):
        raise ValueError(f"frame_lengths must be [batch] = ({batch},), got shape {tuple(frame_lengths.shape)}")
    if not isinstance(frame_lengths, jax.core.Tracer):
        lengths = np.asarray(frame_lengths)
        if lengths.min(initial=0) < 0 or lengths.max(initial=0) > time:
            raise ValueError(f"frame_lengths must be in [0, {time}], got {lengths.tolist()}")


def max_num_spans(time: int, mask_prob: float, mask_length: int, min_masks: int) -> int:
    """A static upper bound of the spans any row of `time` frames can get (the JAX sampler's K)."""
    rounded_max = math.ceil(mask_prob * time / mask_length)  # int(x + u) <= ceil(x) for u in [0, 1)
    return max(0, min(max(min_masks, rounded_max), time // mask_length, time - mask_length + 1))


def compute_mask_indices(
    key: jax.Array,
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    frame_lengths: jax.Array | None = None,
) -> jax.Array:
    """Samples span masks inside jit (static shapes), distributed as transformers' sampler.

    Span starts are drawn without replacement as the `num_spans` largest of i.i.d. uniform scores
    over the possible starts of each row (a uniform random subset), then turned into spans with a
    +1/-1 difference array and a cumulative sum.

    Args:
      key: PRNG key.
      shape: static `(batch, time)`.
      mask_prob: probability of a frame being a span start (0.65 for pretraining).
      mask_length: span length (10).
      min_masks: minimum number of spans per utterance (2).
      frame_lengths: optional `[batch]` int, unpadded frames per utterance; frames at and after it
        are padding and never masked. None: every frame is real.

    Returns:
      `[batch, time]` bool, True on masked frames.
    """
    batch, time = check_mask_arguments(shape, mask_prob, mask_length, min_masks)
    if frame_lengths is None:
        frame_lengths = jnp.full((batch,), time, jnp.int32)
    else:
        _check_lengths(frame_lengths, batch, time)
        frame_lengths = jnp.asarray(frame_lengths, jnp.int32)
    max_spans = max_num_spans(time, mask_prob, mask_length, min_masks)
    if max_spans == 0:
        return jnp.zeros((batch, time), bool)

    epsilon_key, start_key = jax.random.split(key)
    epsilon = jax.random.uniform(epsilon_key, (), jnp.float32)
    num_starts = frame_lengths - (mask_length - 1)  # [batch], possible span starts per row
    num_spans = jnp.floor(mask_prob * frame_lengths.astype(jnp.float32) / mask_length + epsilon).astype(jnp.int32)
    num_spans = jnp.maximum(num_spans, min_masks)
    num_spans = jnp.minimum(num_spans, time // mask_length)
    num_spans = jnp.clip(num_spans, 0, jnp.maximum(num_starts, 0))

    positions = jnp.arange(time - mask_length + 1)
    scores = jax.random.uniform(start_key, (batch, positions.size))
    # Impossible starts score below every possible one, so they are picked only past num_starts,
    # which num_spans never reaches.
    scores = jnp.where(positions[None, :] < num_starts[:, None], scores, -1.0)
    _, starts = jax.lax.top_k(scores, max_spans)  # [batch, max_spans], a random permutation's head
    chosen = (jnp.arange(max_spans)[None, :] < num_spans[:, None]).astype(jnp.int32)

    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], starts.shape)
    edges = jnp.zeros((batch, time + 1), jnp.int32)
    edges = edges.at[rows, starts].add(chosen).at[rows, starts + mask_length].add(-chosen)
    return jnp.cumsum(edges[:, :time], axis=1) > 0


def compute_mask_indices_numpy(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    frame_lengths: np.ndarray | None = None,
    rng: np.random.RandomState | None = None,
) -> np.ndarray:
    """NumPy oracle: transformers' `_compute_mask_indices` algorithm, draw for draw.

    With `rng=np.random.RandomState(seed)` it returns what transformers' function returns after
    `np.random.seed(seed)` (except for the padding frame of a row too short for any span, which
    transformers masks and this function does not).

    Args:
      shape: `(batch, time)`.
      mask_prob, mask_length, min_masks: as `compute_mask_indices`.
      frame_lengths: optional `[batch]` unpadded frames per utterance.
      rng: a legacy NumPy generator (transformers uses the global one); default a fresh one.

    Returns:
      `[batch, time]` bool, True on masked frames.
    """
    batch, time = check_mask_arguments(shape, mask_prob, mask_length, min_masks)
    rng = np.random.RandomState() if rng is None else rng
    lengths = np.full(batch, time) if frame_lengths is None else np.asarray(frame_lengths)
    _check_lengths(lengths, batch, time)
    epsilon = rng.rand(1).item()

    def num_spans(length: int) -> int:
        count = max(int(mask_prob * length / mask_length + epsilon), min_masks)
        count = min(count, time // mask_length)
        return max(min(count, length - (mask_length - 1)), 0)

    mask = np.zeros((batch, time), bool)
    if num_spans(time) == 0:
        return mask
    for row, length in enumerate(lengths.tolist()):
        starts = rng.choice(np.arange(max(length - (mask_length - 1), 0)), num_spans(length), replace=False)
        for start in starts:
            mask[row, start : start + mask_length] = True
    return mask


def padding_mask_from_lengths(frame_lengths: jax.Array, time: int) -> jax.Array:
    """`[batch]` lengths -> `[batch, time]` bool, True on real (unpadded) frames."""
    return jnp.arange(time)[None, :] < jnp.asarray(frame_lengths)[:, None]
