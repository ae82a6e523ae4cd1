"""wav2vec 2.0 in Flax NNX: transformers' `Wav2Vec2Model`, `Wav2Vec2ForPreTraining` and `Wav2Vec2ForCTC`.

    waveform [B, S] -> FeatureEncoder -> z [B, T, C]          (feature penalty mean(z^2), fairseq)
      -> LayerNorm -> z_n (extract_features) ---------------> quantizer -> project_q -> q [B, T, D]
      -> Linear -> dropout -> mask embedding on masked frames
      -> ContextNetwork (positional conv, Transformer) (last_hidden_state) -> project_hid -> c [B, T, D]
    loss = sum over masked frames of -log softmax(cos(c_t, [q_t, K distractors]) / kappa)[0]
           + diversity_loss_weight * num_masked * (GV - perplexity) / GV
           + feature_penalty_weight * num_masked * mean(z^2)

`Wav2Vec2Model` is the shared encoder (the first three lines), `Wav2Vec2ForPreTraining` holds it
as `wav2vec2` beside the quantizer and the two projections, so parameter paths are transformers'
keys (`wav2vec2.encoder.layers.0...`, `quantizer...`). `Wav2Vec2ForCTC`, the fine-tuning model,
holds the same encoder as `wav2vec2` beside `lm_head`:

    waveform -> Wav2Vec2Model (time spans -> mask embedding, channel spans -> 0, in training)
      -> final dropout -> lm_head -> logits [B, T, vocab] -> CTC loss (blank = pad_token_id)

The losses are sums over the masked frames, as the reference's (divide by `num_masked` for "per
masked frame"; fairseq logs loss / num_masked / ln 2); accuracy travels as the count `num_correct`,
and its chance level as `chance_correct` (a distractor with its target's codewords can't be picked,
so chance is above 1 / (1 + K) when codebooks are small).
Masks, distractors and Gumbel noise are drawn inside jit from named sub-keys of `key` unless given
explicitly; `training_draws` holds those draws (`sample_masks_and_negatives`, `sample_gumbel_noise`
and, fine-tuning's time and channel masks, `sample_training_masks`): they give exactly what the model
draws for a key, for tools that feed another implementation the same inputs.

Distractor indices: inside the library `[batch, time, K]` frame indices within each utterance
(`negative_indices=`). `sampled_negative_indices=` takes transformers' format instead (indices into
the batch flattened to `[batch * time]`), converted at the model's boundary.

Padding: with an `attention_mask`, padded frames are never masked, never distractors, never
attended to and never counted in the perplexity. Group-norm models (BASE, `feat_extract_norm="group"`)
normalise the first conv layer over time *including the padded samples*, exactly as the
reference does, so their outputs on real frames depend on how much padding the batch has
(training and validation keep this: it is how the models were trained). `group_norm="masked"`
takes the statistics over each utterance's real frames instead; with the padded frames kept out of
every later layer (valid convolutions, zeros before the positional convolution, attention masks) a
padded batch then equals each utterance alone, which batched inference uses.

Downstream use: `w2v_jax.checkpoints.load_model(path)` loads any checkpoint format into these
models (the loader builds them, so it lives above them), and `model.features(waveforms,
output_hidden_states=True)` returns each utterance's per-layer representations from bucketed
batches, no compile per length (`w2v_jax.representations`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, TypedDict

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.context_network import ContextNetwork
from w2v_jax.contrastive_loss import (
    contrastive_chance_correct,
    contrastive_logits,
    contrastive_loss_from_logits,
    contrastive_num_correct,
    diversity_loss,
    gather_negatives,
    same_codewords,
)
from w2v_jax.ctc import ctc_utterance_losses, reduce_ctc_losses
from w2v_jax.feature_encoder import FeatureEncoder, Lengths
from w2v_jax.layers import dropout, layer_norm, linear, named_key, rematerialised, scale_gradient
from w2v_jax.masking import check_mask_arguments, padding_mask_from_lengths
from w2v_jax.quantization import CodebookUsage, GumbelVectorQuantizer
from w2v_jax.representations import UtteranceRepresentation, extract_representations
from w2v_jax.training_draws import (
    gumbel_key,
    sample_distractors,
    sample_feature_mask,
    sample_masks_and_negatives,
    sample_time_mask,
)

# How a group-norm feature encoder treats padding (`Wav2Vec2Model.__call__`'s `group_norm`).
GroupNormPadding = Literal["padded", "masked"]
GROUP_NORM_PADDING = ("padded", "masked")


@flax.struct.dataclass
class Wav2Vec2BaseModelOutput:
    """What `Wav2Vec2Model` returns (a pytree; optional fields are None when not computed).

    Attributes:
      last_hidden_state: `[batch, time, hidden]` the context network's output.
      extract_features: `[batch, time, C]` the layer-normalised conv features (the projection's
        input and the quantizer's), never masked.
      hidden_states: with `output_hidden_states`, `num_hidden_layers + 1` arrays
        `[batch, time, hidden]` (see `ContextNetwork`).
      mask_time_indices: `[batch, time]` bool, the masked frames (None without masking).
      padding_mask: `[batch, time]` bool, True on real frames (None without an attention mask).
      mean_squared_features: float32 scalar, mean(z^2) over the real frames of the conv features
        (fairseq's feature penalty before pretraining scales it).
    """

    last_hidden_state: jax.Array
    extract_features: jax.Array
    mean_squared_features: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    mask_time_indices: jax.Array | None = None
    padding_mask: jax.Array | None = None


@flax.struct.dataclass
class Wav2Vec2PreTrainingOutput:
    """What `Wav2Vec2ForPreTraining` returns (a pytree; optional fields are None when not computed).

    Attributes:
      loss: float32 scalar, contrastive + diversity_loss_weight * diversity
        + feature_penalty_weight * feature_penalty (None without distractors).
      contrastive_loss: float32 scalar, summed over masked frames.
      diversity_loss: float32 scalar, (GV - perplexity) / GV * num_masked.
      feature_penalty: float32 scalar, mean(z^2) * num_masked (fairseq's penalty on the summed scale).
      projected_states: `[batch, time, proj_codevector_dim]` c, every frame.
      projected_quantized_states: `[batch, time, proj_codevector_dim]` q, every frame.
      codevector_perplexity: float32 scalar, over the masked frames (all real frames without a mask).
      codevector_indices: `[batch, time, G]` int32, the codeword each group picked, every frame.
      last_hidden_state, extract_features, hidden_states: as `Wav2Vec2BaseModelOutput`'s.
      num_correct: int32 scalar, masked frames whose target has the largest logit.
      num_masked: int32 scalar, masked frames in the batch.
      chance_correct: float32 scalar, the masked frames a uniform guess among each frame's
        target and the distractors that count (not -inf) gets right, in expectation
        (`contrastive_chance_correct`); divided by `num_masked`, the real chance accuracy.
      mask_time_indices: `[batch, time]` bool, the masked frames (None without masking).
    """

    projected_states: jax.Array
    projected_quantized_states: jax.Array
    codevector_perplexity: jax.Array
    codevector_indices: jax.Array
    last_hidden_state: jax.Array
    extract_features: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    loss: jax.Array | None = None
    contrastive_loss: jax.Array | None = None
    diversity_loss: jax.Array | None = None
    feature_penalty: jax.Array | None = None
    num_correct: jax.Array | None = None
    num_masked: jax.Array | None = None
    chance_correct: jax.Array | None = None
    mask_time_indices: jax.Array | None = None

    @property
    def accuracy(self) -> jax.Array | None:
        """float32 scalar, num_correct / max(num_masked, 1) (None without distractors).

        To average over several batches, add up `num_correct` and `num_masked` and divide once.
        """
        if self.num_correct is None or self.num_masked is None:
            return None
        return self.num_correct.astype(jnp.float32) / jnp.maximum(self.num_masked, 1).astype(jnp.float32)

    @property
    def chance_accuracy(self) -> jax.Array | None:
        """float32 scalar, chance_correct / max(num_masked, 1): the accuracy of a uniform guess among
        the distractors that count (None without distractors). Over several batches, divide sums."""
        if self.chance_correct is None or self.num_masked is None:
            return None
        return self.chance_correct / jnp.maximum(self.num_masked, 1).astype(jnp.float32)


class FeatureProjection(nnx.Module):
    """LayerNorm over the conv channels, then Linear to the model dim (transformers' names)."""

    def __init__(self, config: Wav2Vec2Config, *, dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
        self.layer_norm = layer_norm(config.conv_dim[-1], config.layer_norm_eps, dtype, rngs)
        self.projection = linear(config.conv_dim[-1], config.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`[batch, time, C]` -> (`[batch, time, hidden]` projected, `[batch, time, C]` normalised)."""
        normed = self.layer_norm(features)
        return self.projection(normed), normed


def _is_concrete(x: jax.Array | np.ndarray) -> bool:
    return not isinstance(x, jax.core.Tracer)


class Wav2Vec2Model(nnx.Module):
    """The shared encoder, numerically transformers' `Wav2Vec2Model` (no adapter).

    Submodules carry transformers' names (`feature_extractor`, `feature_projection`,
    `masked_spec_embed`, `encoder`). Training (deterministic=False) with `mask_time_prob > 0`
    samples time masks as transformers does; `encode` is the encoder on resolved masks, for heads
    that draw their own (the pretraining model).

    Example:
      >>> encoder = Wav2Vec2Model(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))
      >>> encoder(waveforms, output_hidden_states=True).hidden_states[-1]
    """

    def __init__(
        self,
        config: Wav2Vec2Config,
        *,
        dtype: jnp.dtype | None = None,
        remat: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        """Builds the encoder.

        Args:
          config: the hyper-parameters.
          dtype: computation dtype (e.g. `jnp.bfloat16`); parameters stay float32.
          remat: recompute the conv feature encoder and each Transformer layer in the backward
            pass instead of keeping their activations (`layers.rematerialised`).
          rngs: parameter initialisation only; default `nnx.Rngs(0)`.
        """
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.feature_extractor = FeatureEncoder(
            conv_dim=config.conv_dim,
            conv_kernel=config.conv_kernel,
            conv_stride=config.conv_stride,
            conv_bias=config.conv_bias,
            norm=config.feat_extract_norm,
            dtype=dtype,
            rngs=rngs,
        )
        self.feature_projection = FeatureProjection(config, dtype=dtype, rngs=rngs)
        # U[0, 1), as the reference initialises it.
        self.masked_spec_embed = nnx.Param(jax.random.uniform(rngs.params(), (config.hidden_size,), jnp.float32))
        self.encoder = ContextNetwork(config, dtype=dtype, remat=remat, rngs=rngs)

    def num_frames(self, num_samples: Lengths) -> Lengths:
        """Frames the feature encoder makes of `num_samples` samples (also elementwise on arrays)."""
        return self.feature_extractor.compute_output_length(num_samples)

    def frame_lengths(self, attention_mask: jax.Array | None) -> jax.Array | None:
        """`[batch, samples]` attention mask -> `[batch]` int32 real frames per utterance (None -> None)."""
        if attention_mask is None:
            return None
        samples = jnp.sum(jnp.asarray(attention_mask, jnp.int32), axis=-1)
        return self.num_frames(samples)

    def check_inputs(
        self,
        input_values: jax.Array,
        attention_mask: jax.Array | None,
        mask_time_indices: jax.Array | None,
        deterministic: bool,
        key: jax.Array | None,
    ) -> int:
        """Eager shape checks (a ValueError naming the problem); returns the frame count."""
        self.feature_extractor.check_input(input_values)
        batch, samples = input_values.shape
        time = self.num_frames(samples)
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, samples):
            raise ValueError(
                f"attention_mask must be [batch, samples] = {(batch, samples)} like input_values, "
                f"got shape {tuple(attention_mask.shape)}"
            )
        if mask_time_indices is not None and tuple(mask_time_indices.shape) != (batch, time):
            raise ValueError(
                f"mask_time_indices must be [batch, frames] = {(batch, time)} ({samples} samples make {time} "
                f"frames), got shape {tuple(mask_time_indices.shape)}"
            )
        if not deterministic and key is None:
            raise ValueError("training mode (deterministic=False) needs a key (dropout, Gumbel noise, LayerDrop)")
        config = self.config
        if not deterministic and config.mask_feature_prob > 0.0:
            # Before anything is computed: channel spans that can't be drawn are a config error.
            check_mask_arguments(
                (batch, config.hidden_size),
                config.mask_feature_prob,
                config.mask_feature_length,
                config.mask_feature_min_masks,
            )
        return time

    def padding_mask(self, attention_mask: jax.Array | None, num_frames: int) -> jax.Array | None:
        """`[batch, samples]` attention mask -> `[batch, time]` bool, True on real frames (None -> None)."""
        frame_lengths = self.frame_lengths(attention_mask)
        return None if frame_lengths is None else padding_mask_from_lengths(frame_lengths, num_frames)

    def __call__(
        self,
        input_values: jax.Array,
        attention_mask: jax.Array | None = None,
        mask_time_indices: jax.Array | None = None,
        *,
        deterministic: bool = True,
        key: jax.Array | None = None,
        output_hidden_states: bool = False,
        group_norm: GroupNormPadding = "padded",
    ) -> Wav2Vec2BaseModelOutput:
        """Encodes waveforms.

        Args:
          input_values: `[batch, samples]` float waveforms (at least the encoder's receptive field).
          attention_mask: optional `[batch, samples]` int/bool, 1 on real samples (right padding).
          mask_time_indices: optional `[batch, frames]` bool, the frames to mask; frames in padding
            are dropped from it. Without it, training samples masks from `key` when
            `config.mask_time_prob > 0`, as transformers does (`sample_masks_and_negatives`' mask).
          deterministic: False for training: dropout, LayerDrop, sampled masks.
          key: PRNG key; named sub-keys drive the mask, dropout and LayerDrop.
          output_hidden_states: also return every Transformer layer's input and output.
          group_norm: "padded" (the reference: a group-norm encoder's statistics include the
            padding) or "masked" (over each row's real samples given by `attention_mask`: a padded
            batch equals each utterance alone; module docstring). No effect on layer-norm encoders.

        Returns:
          A `Wav2Vec2BaseModelOutput`.
        """
        config = self.config
        time = self.check_inputs(input_values, attention_mask, mask_time_indices, deterministic, key)
        num_samples = sample_lengths(attention_mask, group_norm)
        padding_mask = self.padding_mask(attention_mask, time)
        if mask_time_indices is not None:
            mask = _without_padding(mask_time_indices, padding_mask)
        elif not deterministic and config.mask_time_prob > 0.0:
            assert key is not None  # check_inputs requires one in training mode
            mask = sample_time_mask(key, config, input_values.shape[0], time, self.frame_lengths(attention_mask))
        else:
            mask = None
        return self.encode(
            input_values,
            padding_mask,
            mask,
            deterministic=deterministic,
            key=key,
            output_hidden_states=output_hidden_states,
            num_samples=num_samples,
        )

    def encode(
        self,
        input_values: jax.Array,
        padding_mask: jax.Array | None,
        mask: jax.Array | None,
        *,
        deterministic: bool = True,
        key: jax.Array | None = None,
        output_hidden_states: bool = False,
        feature_mask: jax.Array | None = None,
        num_samples: jax.Array | None = None,
    ) -> Wav2Vec2BaseModelOutput:
        """`__call__` with the frame-level masks already resolved, unchecked (heads that draw their
        own masks call this). Channel masking follows the time masking, as in transformers.

        Args:
          input_values: `[batch, samples]` float waveforms.
          padding_mask: `[batch, time]` bool, True on real frames, or None (nothing padded).
          mask: `[batch, time]` bool, the frames to replace by the mask embedding (none in padding),
            or None.
          deterministic, key, output_hidden_states: as `__call__`'s.
          feature_mask: `[batch, hidden]` bool, channels zeroed on every frame after the time
            masking. None: in training with `config.mask_feature_prob > 0`, sampled from `key`
            (`sample_feature_mask`), else none.
          num_samples: `[batch]` int real samples per row for the masked group norm
            (`FeatureEncoder.__call__`), or None (statistics over the padded rows, as the reference).
        """
        config = self.config

        def subkey(name: str) -> jax.Array | None:
            return None if key is None else named_key(key, name)

        if self.remat:
            # The conv stack's activations are the model's largest.
            graphdef, params = nnx.split(self.feature_extractor)
            features = rematerialised(lambda p, x: nnx.merge(graphdef, p)(x, num_samples))(params, input_values)
        else:
            features = self.feature_extractor(input_values, num_samples)
        features = scale_gradient(features, config.feature_grad_mult)
        squares = jnp.mean(jnp.square(features.astype(jnp.float32)), axis=-1)  # [batch, time]
        if padding_mask is None:
            mean_squared_features = jnp.mean(squares)
        else:
            mean_squared_features = jnp.sum(jnp.where(padding_mask, squares, 0.0)) / jnp.maximum(
                jnp.sum(padding_mask), 1
            )

        hidden, normed = self.feature_projection(features)
        hidden = dropout(hidden, config.feat_proj_dropout, subkey("feat_proj_dropout"), deterministic)
        if mask is not None:
            hidden = jnp.where(mask[:, :, None], self.masked_spec_embed[...].astype(hidden.dtype), hidden)
        if feature_mask is None and not deterministic and config.mask_feature_prob > 0.0:
            assert key is not None  # check_inputs requires one in training mode
            feature_mask = sample_feature_mask(key, config, hidden.shape[0])
        if feature_mask is not None:
            hidden = jnp.where(feature_mask[:, None, :], jnp.zeros((), hidden.dtype), hidden)
        encoded = self.encoder(
            hidden,
            padding_mask,
            deterministic=deterministic,
            key=subkey("encoder"),
            output_hidden_states=output_hidden_states,
        )
        context, hidden_states = encoded if isinstance(encoded, tuple) else (encoded, None)
        return Wav2Vec2BaseModelOutput(
            last_hidden_state=context,
            extract_features=normed,
            mean_squared_features=mean_squared_features,
            hidden_states=hidden_states,
            mask_time_indices=mask,
            padding_mask=padding_mask,
        )


def sample_lengths(attention_mask: jax.Array | None, group_norm: GroupNormPadding) -> jax.Array | None:
    """`[batch]` int32 real samples per row for the masked group norm, or None ("padded", or no mask).

    ValueError for a `group_norm` other than "padded" and "masked".
    """
    if group_norm not in GROUP_NORM_PADDING:
        raise ValueError(f"group_norm must be one of {GROUP_NORM_PADDING}, got {group_norm!r}")
    if group_norm == "padded" or attention_mask is None:
        return None
    return jnp.sum(jnp.asarray(attention_mask, jnp.int32), axis=-1)


def _without_padding(mask_time_indices: jax.Array, padding_mask: jax.Array | None) -> jax.Array:
    """A caller's `[batch, time]` mask as bool, its frames in padding dropped."""
    mask = jnp.asarray(mask_time_indices, bool)
    return mask if padding_mask is None else mask & padding_mask


class Wav2Vec2ForPreTraining(nnx.Module):
    """The wav2vec 2.0 pretraining model, numerically transformers' `Wav2Vec2ForPreTraining`.

    Submodules carry transformers' names (`wav2vec2`, `quantizer`, `project_hid`, `project_q`), so
    `w2v_jax.checkpoints` maps checkpoints by renaming and transposing.

    Example:
      >>> model = Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))
      >>> out = model(waveforms, deterministic=False, gumbel_temperature=2.0, key=key)
      >>> out.loss / out.num_masked, out.accuracy
    """

    def __init__(
        self,
        config: Wav2Vec2Config,
        *,
        dtype: jnp.dtype | None = None,
        remat: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        """Builds the model; the arguments are `Wav2Vec2Model`'s (whatever `dtype`, the logits,
        losses and codebook statistics are computed in float32)."""
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.wav2vec2 = Wav2Vec2Model(config, dtype=dtype, remat=remat, rngs=rngs)
        self.quantizer = GumbelVectorQuantizer(
            config.conv_dim[-1],
            num_groups=config.num_codevector_groups,
            num_vars=config.num_codevectors_per_group,
            codevector_dim=config.codevector_dim,
            dtype=dtype,
            rngs=rngs,
        )
        self.project_hid = linear(config.hidden_size, config.proj_codevector_dim, dtype=dtype, rngs=rngs)
        self.project_q = linear(config.codevector_dim, config.proj_codevector_dim, dtype=dtype, rngs=rngs)

    def num_frames(self, num_samples: Lengths) -> Lengths:
        """Frames the feature encoder makes of `num_samples` samples (also elementwise on arrays)."""
        return self.wav2vec2.num_frames(num_samples)

    def features(
        self,
        waveforms: Sequence[np.ndarray],
        *,
        output_hidden_states: bool = False,
        batch_size: int = 8,
        group_norm: str = "exact",
    ) -> list[UtteranceRepresentation]:
        """Per-utterance representations of `waveforms` (float `[samples]` each), evaluation mode: the
        last hidden state, the conv features and, with `output_hidden_states`, every layer's hidden
        states, from bucketed batches (no compile per length). See `w2v_jax.representations`."""
        return extract_representations(
            self, waveforms, output_hidden_states=output_hidden_states, batch_size=batch_size, group_norm=group_norm
        )

    def _check_inputs(
        self,
        input_values: jax.Array,
        attention_mask: jax.Array | None,
        mask_time_indices: jax.Array | None,
        sampled_negative_indices: jax.Array | None,
        negative_indices: jax.Array | None,
        deterministic: bool,
        key: jax.Array | None,
    ) -> int:
        """Eager shape and value checks (a ValueError naming the problem); returns the frame count."""
        time = self.wav2vec2.check_inputs(input_values, attention_mask, mask_time_indices, deterministic, key)
        batch = input_values.shape[0]
        if sampled_negative_indices is not None and negative_indices is not None:
            raise ValueError("give sampled_negative_indices (transformers' format) or negative_indices, not both")
        given = "sampled_negative_indices" if sampled_negative_indices is not None else "negative_indices"
        indices = sampled_negative_indices if sampled_negative_indices is not None else negative_indices
        if indices is not None:
            shape = tuple(indices.shape)
            if len(shape) != 3 or shape[:2] != (batch, time) or shape[2] < 1:
                raise ValueError(f"{given} must be [batch, frames, K] = {(batch, time)} + (K,), got shape {shape}")
            if mask_time_indices is None and key is None:
                raise ValueError(f"{given} need mask_time_indices (or a key to sample them)")
            if _is_concrete(indices):
                # Each row's first valid index: b * time in transformers' flattened layout, else 0.
                first = np.arange(batch)[:, None, None] * time if indices is sampled_negative_indices else 0
                values = np.asarray(indices)
                if (values < first).any() or (values >= first + time).any():
                    layout = (
                        f"the flattened [batch * frames] = [{batch} * {time}] layout (row b holds b * {time} + frame)"
                        if indices is sampled_negative_indices
                        else f"[0, {time}) (frame indices within the utterance)"
                    )
                    raise ValueError(f"{given} must index frames of their own utterance in {layout}")
        config = self.config
        if mask_time_indices is None and key is not None:
            if config.mask_time_prob == 0.0:
                raise ValueError("sampling masks needs Wav2Vec2Config.mask_time_prob > 0 (or pass mask_time_indices)")
            check_mask_arguments(
                (batch, time), config.mask_time_prob, config.mask_time_length, config.mask_time_min_masks
            )
        if mask_time_indices is not None and negative_indices is None and key is not None:
            self._check_negatives_possible(mask_time_indices, attention_mask)
        return time

    def _check_negatives_possible(self, mask: jax.Array, attention_mask: jax.Array | None) -> None:
        """A concrete mask must leave every utterance that has masked frames more than K of them.

        (Masks sampled inside jit aren't checked: like fairseq and transformers, distractors are
        then drawn with replacement even where an utterance has fewer than K other masked frames.)
        """
        if not _is_concrete(mask) or (attention_mask is not None and not _is_concrete(attention_mask)):
            return
        host_mask = np.asarray(mask, bool)
        if attention_mask is not None:
            lengths = self.num_frames(np.asarray(attention_mask).astype(np.int64).sum(-1))
            host_mask = host_mask & (np.arange(host_mask.shape[1])[None, :] < lengths[:, None])
        counts = host_mask.sum(axis=1)
        counts = counts[counts > 0]
        if counts.size and counts.min() <= self.config.num_negatives:
            raise ValueError(
                f"num_negatives={self.config.num_negatives} needs more masked frames per utterance than that; "
                f"an utterance has only {int(counts.min())} (raise mask_time_prob or lower num_negatives)"
            )

    def __call__(
        self,
        input_values: jax.Array,
        attention_mask: jax.Array | None = None,
        mask_time_indices: jax.Array | None = None,
        sampled_negative_indices: jax.Array | None = None,
        *,
        negative_indices: jax.Array | None = None,
        deterministic: bool = True,
        gumbel_temperature: float | jax.Array = 2.0,
        key: jax.Array | None = None,
        output_hidden_states: bool = False,
    ) -> Wav2Vec2PreTrainingOutput:
        """Runs the model and its pretraining losses.

        Args:
          input_values, attention_mask, output_hidden_states: as `Wav2Vec2Model`'s.
          mask_time_indices: optional `[batch, frames]` bool, the frames to mask; frames in padding
            are dropped from it. Without it, masks are sampled from `key` (none without a key), in
            training and evaluation alike.
          sampled_negative_indices: optional `[batch, frames, K]` int, transformers' format (indices
            into the flattened `[batch * frames]` targets).
          negative_indices: optional `[batch, frames, K]` int, the library's format (frame indices
            within each utterance); give at most one of the two. Without either, K = num_negatives
            distractors per masked frame are sampled from `key` among the other masked frames of
            the same utterance. Without distractors, the loss fields are None.
          deterministic: False for training: dropout, LayerDrop and a hard Gumbel sample.
          gumbel_temperature: the quantizer's temperature (training only).
          key: PRNG key; named sub-keys drive the mask, the distractors, dropout and Gumbel noise
            (`sample_masks_and_negatives`, `sample_gumbel_noise` draw the same).

        Returns:
          A `Wav2Vec2PreTrainingOutput`.
        """
        config = self.config
        time = self._check_inputs(
            input_values,
            attention_mask,
            mask_time_indices,
            sampled_negative_indices,
            negative_indices,
            deterministic,
            key,
        )
        batch = input_values.shape[0]
        if sampled_negative_indices is not None:
            # transformers' format -> ours: subtract each row's offset in the flattened batch.
            rows = jnp.arange(batch, dtype=jnp.int32)[:, None, None]
            negative_indices = jnp.asarray(sampled_negative_indices, jnp.int32) - rows * time

        padding_mask = self.wav2vec2.padding_mask(attention_mask, time)
        mask, negative_indices = self._masks(
            mask_time_indices, negative_indices, attention_mask, padding_mask, key, batch, time
        )
        base = self.wav2vec2.encode(
            input_values,
            padding_mask,
            mask,
            deterministic=deterministic,
            key=key,
            output_hidden_states=output_hidden_states,
        )
        projected_states = self.project_hid(base.last_hidden_state)

        quantizer_input = dropout(
            base.extract_features,
            config.feat_quantizer_dropout,
            None if key is None else named_key(key, "feat_quantizer_dropout"),
            deterministic,
        )
        quantized, usage = self.quantizer(
            quantizer_input,
            temperature=gumbel_temperature,
            key=None if key is None else gumbel_key(key),
            deterministic=deterministic,
            mask=mask if mask is not None else padding_mask,
        )
        projected_quantized = self.project_q(quantized)
        output = Wav2Vec2PreTrainingOutput(
            projected_states=projected_states,
            projected_quantized_states=projected_quantized,
            codevector_perplexity=usage.perplexity,
            codevector_indices=usage.indices,
            last_hidden_state=base.last_hidden_state,
            extract_features=base.extract_features,
            hidden_states=base.hidden_states,
            mask_time_indices=mask,
        )

        if negative_indices is None:
            return output
        assert mask is not None  # `_check_inputs`: distractors come with a mask (given or drawn)
        losses = pretraining_losses(
            config,
            projected_states,
            projected_quantized,
            usage,
            mask,
            jnp.asarray(negative_indices, jnp.int32),
            base.mean_squared_features,
        )
        return dataclasses.replace(output, **losses)

    def _masks(
        self,
        mask_time_indices: jax.Array | None,
        negative_indices: jax.Array | None,
        attention_mask: jax.Array | None,
        padding_mask: jax.Array | None,
        key: jax.Array | None,
        batch: int,
        time: int,
    ) -> tuple[jax.Array | None, jax.Array | None]:
        """The masked frames and distractors of a call: the given ones (masked frames in padding
        dropped), the others drawn from `key` (`sample_masks_and_negatives`' draws); None without a key."""
        config = self.config
        if mask_time_indices is not None:
            mask = _without_padding(mask_time_indices, padding_mask)
        elif key is not None:
            frame_lengths = self.wav2vec2.frame_lengths(attention_mask)
            if negative_indices is None:
                return sample_masks_and_negatives(key, config, batch, time, frame_lengths)
            mask = sample_time_mask(key, config, batch, time, frame_lengths)
        else:
            mask = None
        if negative_indices is None and mask is not None and key is not None:
            negative_indices = sample_distractors(key, config, mask)
        return mask, negative_indices


class PretrainingLosses(TypedDict):
    """The pretraining objective's fields of `Wav2Vec2PreTrainingOutput` (`pretraining_losses`)."""

    loss: jax.Array
    contrastive_loss: jax.Array
    diversity_loss: jax.Array
    feature_penalty: jax.Array
    num_correct: jax.Array
    num_masked: jax.Array
    chance_correct: jax.Array


def pretraining_losses(
    config: Wav2Vec2Config,
    projected_states: jax.Array,
    projected_quantized: jax.Array,
    usage: CodebookUsage,
    mask: jax.Array,
    negative_indices: jax.Array,
    mean_squared_features: jax.Array,
) -> PretrainingLosses:
    """The pretraining objective's fields of `Wav2Vec2PreTrainingOutput` (see the module docstring).

    Args:
      config: the model's config (temperature, loss weights, G and V).
      projected_states: c `[batch, time, D]`.
      projected_quantized: q `[batch, time, D]`.
      usage: the quantizer's codebook usage (soft probabilities and chosen codewords).
      mask: `[batch, time]` bool, the masked frames.
      negative_indices: `[batch, time, K]` int32 frame indices within each utterance.
      mean_squared_features: mean(z^2) over the real frames.

    Returns:
      `loss`, `contrastive_loss`, `diversity_loss`, `feature_penalty` (sums over the masked
      frames), `num_correct`, `num_masked`, `chance_correct`.
    """
    negatives = gather_negatives(projected_quantized, negative_indices)
    num_masked = jnp.sum(mask, dtype=jnp.int32)
    # Identity of a distractor and its target from the codeword choices, not float equality of
    # the projected vectors, which can differ by an ulp with the matmul's tiling (batch layout).
    same_as_positive = same_codewords(usage.indices, negative_indices)
    logits = contrastive_logits(
        projected_states, projected_quantized, negatives, config.contrastive_logits_temperature, same_as_positive
    )
    contrastive = contrastive_loss_from_logits(logits, mask, "sum")
    diversity = diversity_loss(usage.probs, config.num_codevector_groups, config.num_codevectors_per_group) * num_masked
    feature_penalty = mean_squared_features * num_masked
    loss = contrastive + config.diversity_loss_weight * diversity + config.feature_penalty_weight * feature_penalty
    return {
        "loss": loss,
        "contrastive_loss": contrastive,
        "diversity_loss": diversity,
        "feature_penalty": feature_penalty,
        "num_correct": contrastive_num_correct(logits, mask),
        "num_masked": num_masked,
        "chance_correct": contrastive_chance_correct(logits, mask),
    }


@flax.struct.dataclass
class Wav2Vec2CTCOutput:
    """What `Wav2Vec2ForCTC` returns (a pytree; optional fields are None when not computed).

    Attributes:
      logits: `[batch, time, vocab_size]` (the computation dtype), every frame.
      logit_lengths: `[batch]` int32 real frames per utterance (the conv arithmetic on the
        attention mask; all frames without one), the CTC loss's input lengths.
      loss: float32 scalar, the CTC loss with `config.ctc_loss_reduction` (None without labels).
      utterance_losses: `[batch]` float32, each utterance's CTC loss, before the reduction.
      num_label_tokens: int32 scalar, label ids in the batch (-100 and blanks excluded), the
        normaliser of a summed loss (fairseq's sample size).
      last_hidden_state, hidden_states, mask_time_indices: as `Wav2Vec2BaseModelOutput`'s.
    """

    logits: jax.Array
    logit_lengths: jax.Array
    last_hidden_state: jax.Array
    loss: jax.Array | None = None
    utterance_losses: jax.Array | None = None
    num_label_tokens: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    mask_time_indices: jax.Array | None = None


class Wav2Vec2ForCTC(nnx.Module):
    """The fine-tuning model, numerically transformers' `Wav2Vec2ForCTC` (no adapter).

    `wav2vec2` (the shared `Wav2Vec2Model`), dropout `final_dropout` on its output, `lm_head`
    Linear(hidden -> vocab_size). Training (deterministic=False) masks time spans with the mask
    embedding (`mask_time_prob`) and channel spans with zeros (`mask_feature_prob`), as
    transformers does.

    Example:
      >>> model = Wav2Vec2ForCTC(Wav2Vec2Config.preset("tiny", vocab_size=30), rngs=nnx.Rngs(0))
      >>> out = model(waveforms, attention_mask, labels=labels)     # labels padded with -100
      >>> out.loss, greedy_decode(out.logits, out.logit_lengths, vocabulary)
    """

    def __init__(
        self,
        config: Wav2Vec2Config,
        *,
        dtype: jnp.dtype | None = None,
        remat: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        """Builds the model; the arguments are `Wav2Vec2Model`'s. `lm_head` is initialised as
        transformers does (N(0, 0.02) weights, zero bias)."""
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.wav2vec2 = Wav2Vec2Model(config, dtype=dtype, remat=remat, rngs=rngs)
        self.lm_head = linear(config.hidden_size, config.vocab_size, stddev=0.02, dtype=dtype, rngs=rngs)

    def num_frames(self, num_samples: Lengths) -> Lengths:
        """Frames (= logits) the model makes of `num_samples` samples (also elementwise on arrays)."""
        return self.wav2vec2.num_frames(num_samples)

    def __call__(
        self,
        input_values: jax.Array,
        attention_mask: jax.Array | None = None,
        labels: jax.Array | None = None,
        *,
        input_lengths: jax.Array | None = None,
        mask_time_indices: jax.Array | None = None,
        deterministic: bool = True,
        key: jax.Array | None = None,
        output_hidden_states: bool = False,
        group_norm: GroupNormPadding = "padded",
    ) -> Wav2Vec2CTCOutput:
        """Runs the model and, with labels, its CTC loss.

        Args:
          input_values, attention_mask, mask_time_indices, output_hidden_states, group_norm: as
            `Wav2Vec2Model`'s. Group-norm models depend on zero padding (module docstring):
            transformers' advice for them is to zero-pad without an attention mask.
          labels: optional `[batch, labels]` int ids in [0, vocab_size), padded with -100.
          input_lengths: optional `[batch]` int real samples per row of a zero-padded batch given
            without attention mask: the logits' real frames (the CTC loss's lengths) come from them
            instead of from the attention mask.
          deterministic: False for training: dropout, LayerDrop, time and channel masks.
          key: PRNG key; named sub-keys drive the masks, the encoder's dropout and the final dropout.

        Returns:
          A `Wav2Vec2CTCOutput`.
        """
        config = self.config
        base = self.wav2vec2(
            input_values,
            attention_mask,
            mask_time_indices,
            deterministic=deterministic,
            key=key,
            output_hidden_states=output_hidden_states,
            group_norm=group_norm,
        )
        hidden = dropout(
            base.last_hidden_state,
            config.final_dropout,
            None if key is None else named_key(key, "final_dropout"),
            deterministic,
        )
        logits = self.lm_head(hidden)
        batch, time = logits.shape[:2]
        lengths: jax.Array | None
        if input_lengths is not None:
            lengths = self.num_frames(jnp.asarray(input_lengths, jnp.int32))
        else:
            lengths = self.wav2vec2.frame_lengths(attention_mask)
        lengths = jnp.full((batch,), time, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
        output = Wav2Vec2CTCOutput(
            logits=logits,
            logit_lengths=lengths,
            last_hidden_state=base.last_hidden_state,
            hidden_states=base.hidden_states,
            mask_time_indices=base.mask_time_indices,
        )
        if labels is None:
            return output
        labels = jnp.asarray(labels)
        losses, target_lengths = ctc_utterance_losses(
            logits, lengths, labels, blank_id=config.pad_token_id, zero_infinity=config.ctc_zero_infinity
        )
        return dataclasses.replace(
            output,
            loss=reduce_ctc_losses(losses, target_lengths, config.ctc_loss_reduction),
            utterance_losses=losses,
            num_label_tokens=jnp.sum(target_lengths, dtype=jnp.int32),
        )
