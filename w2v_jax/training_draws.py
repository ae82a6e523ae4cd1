"""What the models draw at random in training, from named sub-keys of the key they get.

A model given a `key` and no masks or distractors draws them itself, inside jit; the functions here
are those draws, so a tool can make them outside the model and feed them back (or to another
implementation) and get exactly what the model computes for that key:

- `sample_masks_and_negatives`: the span masks `[batch, time]` and the distractors
  `[batch, time, K]` of `Wav2Vec2ForPreTraining` (sub-keys "mask" and "negatives");
  `masks_and_negatives` draws them from two given keys (validation's fixed keys);
- `sample_training_masks`: the time and channel masks of `Wav2Vec2Model` / `Wav2Vec2ForCTC` in
  training (`sample_feature_mask`: the channel mask alone, sub-key "mask_feature");
- `sample_gumbel_noise`: the quantizer's Gumbel noise `[batch, time, G, V]` (sub-key "gumbel").

The span masks follow transformers' `_compute_mask_indices` (`masking.compute_mask_indices`), the
distractors its `_sample_negative_indices` (`contrastive_loss.sample_negative_indices`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.contrastive_loss import sample_negative_indices
from w2v_jax.layers import named_key
from w2v_jax.masking import compute_mask_indices
from w2v_jax.quantization import gumbel_noise


def _span_mask(
    mask_key: jax.Array, config: Wav2Vec2Config, batch_size: int, num_frames: int, frame_lengths: jax.Array | None
) -> jax.Array:
    return compute_mask_indices(
        mask_key,
        (batch_size, num_frames),
        config.mask_time_prob,
        config.mask_time_length,
        config.mask_time_min_masks,
        frame_lengths,
    )


def sample_time_mask(
    key: jax.Array, config: Wav2Vec2Config, batch_size: int, num_frames: int, frame_lengths: jax.Array | None
) -> jax.Array:
    """The span mask `[batch, time]` bool a model draws for `key` (sub-key "mask"; the config's
    `mask_time_*`), never beyond `frame_lengths` (`[batch]` int32 real frames, or None)."""
    return _span_mask(named_key(key, "mask"), config, batch_size, num_frames, frame_lengths)


def sample_distractors(key: jax.Array, config: Wav2Vec2Config, mask: jax.Array) -> jax.Array:
    """The distractors `[batch, time, K]` int32 (frame indices within each utterance) the pretraining
    model draws for `key` (sub-key "negatives") among the masked frames of `mask` `[batch, time]`."""
    return sample_negative_indices(named_key(key, "negatives"), mask, config.num_negatives)


def masks_and_negatives(
    mask_key: jax.Array,
    negatives_key: jax.Array,
    config: Wav2Vec2Config,
    batch_size: int,
    num_frames: int,
    frame_lengths: jax.Array | np.ndarray | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Span masks drawn from `mask_key` and, for each masked frame, `num_negatives` distractors
    among the other masked frames of its utterance drawn from `negatives_key` (the config's
    `mask_time_*` and `num_negatives`). `sample_masks_and_negatives` calls it with the model's sub-keys.

    Args:
      mask_key, negatives_key: the two draws' keys.
      config: the model's config.
      batch_size: B.
      num_frames: T, `model.num_frames(samples)`.
      frame_lengths: optional `[batch]` int real frames per utterance (never masked beyond them);
        None when nothing is padded.

    Returns:
      `(mask [batch, time] bool, negative_indices [batch, time, K] int32)`, the distractors as frame
      indices within each utterance (rows of unmasked frames hold the frame's own index).
    """
    if frame_lengths is not None:
        frame_lengths = jnp.asarray(frame_lengths, jnp.int32)
    mask = _span_mask(mask_key, config, batch_size, num_frames, frame_lengths)
    return mask, sample_negative_indices(negatives_key, mask, config.num_negatives)


def sample_masks_and_negatives(
    key: jax.Array,
    config: Wav2Vec2Config,
    batch_size: int,
    num_frames: int,
    frame_lengths: jax.Array | np.ndarray | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The span masks and distractors `Wav2Vec2ForPreTraining` draws for `key` when given neither.

    Passing them back explicitly (`mask_time_indices=`, `negative_indices=`) with the same key
    gives identical outputs; tools use this to feed another implementation the model's draws.

    Args:
      key: the key the model gets.
      config, batch_size, num_frames, frame_lengths: as `masks_and_negatives`'.

    Returns:
      `masks_and_negatives` drawn from the model's sub-keys of `key` ("mask", "negatives").
    """
    return masks_and_negatives(
        named_key(key, "mask"), named_key(key, "negatives"), config, batch_size, num_frames, frame_lengths
    )


def sample_feature_mask(key: jax.Array, config: Wav2Vec2Config, batch_size: int) -> jax.Array:
    """The channel mask `[batch, hidden]` bool a model in training draws for `key` (transformers'
    `_mask_hidden_states`: spans over the hidden channels, the same for every frame, padding-blind)."""
    return compute_mask_indices(
        named_key(key, "mask_feature"),
        (batch_size, config.hidden_size),
        config.mask_feature_prob,
        config.mask_feature_length,
        config.mask_feature_min_masks,
    )


def sample_training_masks(
    key: jax.Array,
    config: Wav2Vec2Config,
    batch_size: int,
    num_frames: int,
    frame_lengths: jax.Array | np.ndarray | None = None,
) -> tuple[jax.Array | None, jax.Array | None]:
    """The masks `Wav2Vec2Model` (so `Wav2Vec2ForCTC`) draws in training for `key` when given none.

    Args:
      key: the key the model gets.
      config: the model's config (`mask_time_*`, `mask_feature_*`).
      batch_size: B.
      num_frames: T, `model.num_frames(samples)`.
      frame_lengths: optional `[batch]` int real frames per utterance, from the attention mask the
        model gets; None when it gets none.

    Returns:
      `(time mask [batch, time] bool, channel mask [batch, hidden] bool)`, each None when its
      probability is 0 (the model then masks nothing there).
    """
    time_mask = feature_mask = None
    if config.mask_time_prob > 0.0:
        if frame_lengths is not None:
            frame_lengths = jnp.asarray(frame_lengths, jnp.int32)
        time_mask = sample_time_mask(key, config, batch_size, num_frames, frame_lengths)
    if config.mask_feature_prob > 0.0:
        feature_mask = sample_feature_mask(key, config, batch_size)
    return time_mask, feature_mask


def gumbel_key(key: jax.Array) -> jax.Array:
    """The sub-key of a model's `key` that its quantizer's Gumbel noise is drawn from."""
    return named_key(key, "gumbel")


def sample_gumbel_noise(key: jax.Array, config: Wav2Vec2Config, batch_size: int, num_frames: int) -> jax.Array:
    """The standard Gumbel noise `[batch, time, G, V]` (float32) the quantizer adds in training for `key`."""
    shape = (batch_size, num_frames, config.num_codevector_groups, config.num_codevectors_per_group)
    return gumbel_noise(gumbel_key(key), shape)
