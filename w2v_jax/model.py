"""wav2vec 2.0 pretraining model: transformers' `Wav2Vec2ForPreTraining` in Flax NNX.

    waveform [B, S] -> FeatureEncoder -> z [B, T, C]          (feature penalty mean(z^2), fairseq)
      -> LayerNorm -> z_n ----------------------------------> quantizer -> project_q -> q [B, T, D]
      -> Linear -> dropout -> mask embedding on masked frames
      -> ContextNetwork (positional conv, Transformer) -> project_hid -> c [B, T, D]
    loss = sum over masked frames of -log softmax(cos(c_t, [q_t, K distractors]) / kappa)[0]
           + diversity_loss_weight * num_masked * (GV - perplexity) / GV
           + feature_penalty_weight * num_masked * mean(z^2)

The losses are sums over the masked frames, as the reference's (divide by `num_masked` for "per
masked frame"; fairseq logs loss / num_masked / ln 2). Masks and distractors are sampled inside
jit from named sub-keys of `key` unless given explicitly; explicit ones use transformers' formats,
which is how the parity tests feed both frameworks identical inputs.

Padding: with an `attention_mask`, padded frames are never masked, never distractors, never
attended to and never counted in the perplexity. Group-norm models (BASE, `feat_extract_norm="group"`)
normalise the first conv layer over time *including the padded samples*, exactly as the
reference does, so their outputs on real frames depend on how much padding the batch has;
crop batches to their shortest utterance (fairseq's default) when that matters.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.context_network import ContextNetwork, dropout, layer_norm, linear, named_key, rematerialised
from w2v_jax.contrastive_loss import (
    contrastive_accuracy,
    contrastive_logits,
    contrastive_loss_from_logits,
    diversity_loss,
    gather_negatives,
    same_codewords,
    sample_negative_indices,
)
from w2v_jax.feature_encoder import FeatureEncoder
from w2v_jax.masking import check_mask_arguments, compute_mask_indices, padding_mask_from_lengths
from w2v_jax.quantization import GumbelVectorQuantizer


@flax.struct.dataclass
class Wav2Vec2PreTrainingOutput:
    """What `Wav2Vec2ForPreTraining` returns (a pytree; fields are None when not computed).

    Attributes:
      loss: float32 scalar, contrastive + diversity_loss_weight * diversity
        + feature_penalty_weight * feature_penalty (None without distractors).
      contrastive_loss: float32 scalar, summed over masked frames.
      diversity_loss: float32 scalar, (GV - perplexity) / GV * num_masked.
      feature_penalty: float32 scalar, mean(z^2) * num_masked (fairseq's penalty on the summed scale).
      projected_states: `[batch, time, proj_codevector_dim]` c, every frame.
      projected_quantized_states: `[batch, time, proj_codevector_dim]` q, every frame.
      codevector_perplexity: float32 scalar, over the masked frames (all real frames without a mask).
      accuracy: float32 scalar, fraction of masked frames whose target has the largest logit.
      num_masked: int32 scalar, masked frames in the batch.
      mask_time_indices: `[batch, time]` bool, the masked frames (None without masking).
    """

    projected_states: jax.Array
    projected_quantized_states: jax.Array
    codevector_perplexity: jax.Array
    loss: jax.Array | None = None
    contrastive_loss: jax.Array | None = None
    diversity_loss: jax.Array | None = None
    feature_penalty: jax.Array | None = None
    accuracy: jax.Array | None = None
    num_masked: jax.Array | None = None
    mask_time_indices: jax.Array | None = None


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """Identity forward, gradient times `scale` backward (fairseq's GradMultiply)."""
    return x


def _scale_gradient_fwd(x: jax.Array, scale: float) -> tuple[jax.Array, None]:
    return x, None


def _scale_gradient_bwd(scale: float, _: None, g: jax.Array) -> tuple[jax.Array]:
    return (g * scale,)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


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


class Wav2Vec2ForPreTraining(nnx.Module):
    """The wav2vec 2.0 pretraining model, numerically transformers' `Wav2Vec2ForPreTraining`.

    Submodules carry transformers' names (`feature_extractor`, `feature_projection`,
    `masked_spec_embed`, `encoder`, `quantizer`, `project_hid`, `project_q`), so
    `w2v_jax.convert` maps checkpoints by renaming and transposing.

    Example:
      >>> model = Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))
      >>> out = model(waveforms, deterministic=False, gumbel_temperature=2.0, key=key)
      >>> out.loss / out.num_masked
    """

    def __init__(
        self,
        config: Wav2Vec2Config,
        *,
        dtype: jnp.dtype | None = None,
        remat: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        """Builds the model.

        Args:
          config: the hyper-parameters.
          dtype: computation dtype (e.g. `jnp.bfloat16`); parameters stay float32, and the logits,
            losses and codebook statistics are computed in float32.
          remat: recompute the conv feature encoder and each Transformer layer in the backward
            pass instead of keeping their activations (`context_network.rematerialised`).
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

    def num_frames(self, num_samples: int) -> int:
        """Frames the feature encoder makes of `num_samples` samples."""
        return self.feature_extractor.compute_output_length(num_samples)

    def _check_inputs(
        self,
        input_values: jax.Array,
        attention_mask: jax.Array | None,
        mask_time_indices: jax.Array | None,
        sampled_negative_indices: jax.Array | None,
        deterministic: bool,
        key: jax.Array | None,
    ) -> int:
        """Eager shape and value checks (a ValueError naming the problem); returns the frame count."""
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
        if sampled_negative_indices is not None:
            shape = tuple(sampled_negative_indices.shape)
            if len(shape) != 3 or shape[:2] != (batch, time) or shape[2] < 1:
                raise ValueError(
                    f"sampled_negative_indices must be [batch, frames, K] = {(batch, time)} + (K,), got shape {shape}"
                )
            if mask_time_indices is None and key is None:
                raise ValueError("sampled_negative_indices need mask_time_indices (or a key to sample them)")
            if _is_concrete(sampled_negative_indices):
                # transformers' format: indices into the batch flattened to [batch * time].
                flat = np.asarray(sampled_negative_indices)
                row = np.arange(batch)[:, None, None] * time
                if (flat < row).any() or (flat >= row + time).any():
                    raise ValueError(
                        "sampled_negative_indices must index frames of their own utterance in the flattened "
                        f"[batch * frames] = [{batch} * {time}] layout (row b holds b * {time} + frame)"
                    )
        if not deterministic and key is None:
            raise ValueError("training mode (deterministic=False) needs a key (dropout, Gumbel noise, LayerDrop)")
        config = self.config
        if mask_time_indices is None and key is not None:
            if config.mask_time_prob == 0.0:
                raise ValueError("sampling masks needs Wav2Vec2Config.mask_time_prob > 0 (or pass mask_time_indices)")
            check_mask_arguments(
                (batch, time), config.mask_time_prob, config.mask_time_length, config.mask_time_min_masks
            )
        if mask_time_indices is not None and sampled_negative_indices is None and key is not None:
            self._check_negatives_possible(mask_time_indices, attention_mask)
        return time

    def _check_negatives_possible(self, mask: jax.Array, attention_mask: jax.Array | None) -> None:
        """A concrete mask must leave every utterance that has masked frames more than K of them.

        (Masks sampled inside jit aren't checked: like fairseq and transformers, distractors are
        then drawn with replacement even where an utterance has fewer than K other masked frames.)
        """
        if not _is_concrete(mask) or (attention_mask is not None and not _is_concrete(attention_mask)):
            return
        mask = np.asarray(mask, bool)
        if attention_mask is not None:
            lengths = self.feature_extractor.compute_output_length(np.asarray(attention_mask).astype(np.int64).sum(-1))
            mask = mask & (np.arange(mask.shape[1])[None, :] < lengths[:, None])
        counts = mask.sum(axis=1)
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
        deterministic: bool = True,
        gumbel_temperature: float | jax.Array = 2.0,
        key: jax.Array | None = None,
    ) -> Wav2Vec2PreTrainingOutput:
        """Runs the model and its pretraining losses.

        Args:
          input_values: `[batch, samples]` float waveforms (at least the encoder's receptive field).
          attention_mask: optional `[batch, samples]` int/bool, 1 on real samples (right padding).
          mask_time_indices: optional `[batch, frames]` bool, the frames to mask; frames in padding
            are dropped from it. Without it, masks are sampled from `key` (none without a key).
          sampled_negative_indices: optional `[batch, frames, K]` int, transformers' format (indices
            into the flattened `[batch * frames]` targets). Without it, K = num_negatives
            distractors per masked frame are sampled from `key` among the other masked frames of
            the same utterance. Without either, the loss fields are None.
          deterministic: False for training: dropout, LayerDrop and a hard Gumbel sample.
          gumbel_temperature: the quantizer's temperature (training only).
          key: PRNG key; named sub-keys drive the mask, the distractors, dropout and Gumbel noise.

        Returns:
          A `Wav2Vec2PreTrainingOutput`.
        """
        config = self.config
        time = self._check_inputs(
            input_values, attention_mask, mask_time_indices, sampled_negative_indices, deterministic, key
        )
        batch = input_values.shape[0]

        def subkey(name: str) -> jax.Array | None:
            return None if key is None else named_key(key, name)

        frame_lengths = None
        padding_mask = None
        if attention_mask is not None:
            samples = jnp.sum(jnp.asarray(attention_mask, jnp.int32), axis=-1)
            frame_lengths = self.feature_extractor.compute_output_length(samples)
            padding_mask = padding_mask_from_lengths(frame_lengths, time)

        if self.remat:
            # The conv stack's activations are the largest part (base, 4 x 4 s: its forward + backward
            # alone needs 893 MiB of temporaries, the whole model's 2263 MiB; with remat 894 MiB).
            graphdef, params = nnx.split(self.feature_extractor)
            features = rematerialised(lambda p, x: nnx.merge(graphdef, p)(x))(params, input_values)
        else:
            features = self.feature_extractor(input_values)
        features = scale_gradient(features, config.feature_grad_mult)
        squares = jnp.mean(jnp.square(features.astype(jnp.float32)), axis=-1)  # [batch, time]
        if padding_mask is None:
            penalty = jnp.mean(squares)
        else:
            penalty = jnp.sum(jnp.where(padding_mask, squares, 0.0)) / jnp.maximum(jnp.sum(padding_mask), 1)

        hidden, normed = self.feature_projection(features)
        hidden = dropout(hidden, config.feat_proj_dropout, subkey("feat_proj_dropout"), deterministic)

        if mask_time_indices is not None:
            mask = jnp.asarray(mask_time_indices, bool)
            if padding_mask is not None:
                mask = mask & padding_mask
        elif key is not None:
            mask = compute_mask_indices(
                subkey("mask"),
                (batch, time),
                config.mask_time_prob,
                config.mask_time_length,
                config.mask_time_min_masks,
                frame_lengths,
            )
        else:
            mask = None
        if mask is not None:
            hidden = jnp.where(mask[:, :, None], self.masked_spec_embed[...].astype(hidden.dtype), hidden)

        context = self.encoder(hidden, padding_mask, deterministic=deterministic, key=subkey("encoder"))
        projected_states = self.project_hid(context)

        quantizer_input = dropout(
            normed, config.feat_quantizer_dropout, subkey("feat_quantizer_dropout"), deterministic
        )
        quantized, usage = self.quantizer(
            quantizer_input,
            temperature=gumbel_temperature,
            key=subkey("gumbel"),
            deterministic=deterministic,
            mask=mask if mask is not None else padding_mask,
        )
        projected_quantized = self.project_q(quantized)
        output = Wav2Vec2PreTrainingOutput(
            projected_states=projected_states,
            projected_quantized_states=projected_quantized,
            codevector_perplexity=usage.perplexity,
            mask_time_indices=mask,
        )

        if sampled_negative_indices is not None:
            own_row = jnp.arange(batch, dtype=jnp.int32)[:, None, None] * time
            negative_indices = jnp.asarray(sampled_negative_indices, jnp.int32) - own_row
        elif mask is not None and key is not None:
            negative_indices = sample_negative_indices(subkey("negatives"), mask, config.num_negatives)
        else:
            return output

        negatives = gather_negatives(projected_quantized, negative_indices)
        temperature = config.contrastive_logits_temperature
        num_masked = jnp.sum(mask, dtype=jnp.int32)
        # Identity of a distractor and its target from the codeword choices, not float equality of
        # the projected vectors, which can differ by an ulp with the matmul's tiling (batch layout).
        same_as_positive = same_codewords(usage.indices, negative_indices)
        logits = contrastive_logits(projected_states, projected_quantized, negatives, temperature, same_as_positive)
        contrastive = contrastive_loss_from_logits(logits, mask, "sum")
        diversity = (
            diversity_loss(usage.probs, config.num_codevector_groups, config.num_codevectors_per_group) * num_masked
        )
        feature_penalty = penalty * num_masked
        loss = (
            contrastive
            + config.diversity_loss_weight * diversity
            + config.feature_penalty_weight * feature_penalty
        )
        return output.replace(
            loss=loss,
            contrastive_loss=contrastive,
            diversity_loss=diversity,
            feature_penalty=feature_penalty,
            accuracy=contrastive_accuracy(logits, mask),
            num_masked=num_masked,
        )
