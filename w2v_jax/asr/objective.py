"""CTC fine-tuning as the train step's objective (fairseq's `wav2vec_ctc` criterion).

`CTCObjective`: the model's CTC loss summed over utterances (whatever `ctc_loss_reduction` says), the gradient divided
by the number of utterances (fairseq's `sentence_avg: true`), the encoder frozen (zero gradient) for the first
`freeze_finetune_updates` updates while the head learns. The feature encoder is frozen by `feature_grad_mult = 0`
(fairseq's setting), whose gradient is zero.

Batches are padded to the input pipeline's bucket lengths (never cropped: a transcript covers the
whole utterance). Layer-norm models get the attention mask. Group-norm models (BASE) get zero
padding without an attention mask, as transformers' docs prescribe for them; their outputs then
depend slightly on the padding of the batch, which length buckets keep short. The CTC loss always
uses each utterance's real frame count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from w2v_jax.model import Wav2Vec2ForCTC


@dataclasses.dataclass(frozen=True)
class CTCObjective:
    """CTC fine-tuning as a `train_step.Objective` (see the module docstring).

    Attributes:
      freeze_finetune_updates: updates during which only `lm_head` learns.
      use_attention_mask: pass the attention mask to the model (layer-norm models); group-norm
        models get zero padding only.
    """

    freeze_finetune_updates: int = 0
    use_attention_mask: bool = True
    sums: tuple[str, ...] = ("loss",)
    counts: tuple[str, ...] = ("num_utterances", "num_label_tokens", "num_frames", "num_blank_frames")
    normalizer: str = "num_utterances"

    def loss(
        self, model: nnx.Module, micro: Mapping[str, jax.Array], key: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
        if not isinstance(model, Wav2Vec2ForCTC):  # at trace time
            raise TypeError(f"CTCObjective trains a Wav2Vec2ForCTC, got a {type(model).__name__}")
        attention_mask = micro["attention_mask"]
        # The model's per-utterance CTC losses; group-norm models get the batch zero-padded without
        # an attention mask, and their real lengths for the loss.
        out = model(
            micro["input_values"],
            attention_mask if self.use_attention_mask else None,
            micro["labels"],
            input_lengths=None if self.use_attention_mask else jnp.sum(attention_mask.astype(jnp.int32), axis=-1),
            deterministic=False,
            key=key,
        )
        assert out.utterance_losses is not None and out.num_label_tokens is not None  # labels given
        loss = jnp.sum(out.utterance_losses)
        # Real frames whose argmax is the blank: the all-blank plateau's measure (training.health).
        real = jnp.arange(out.logits.shape[1])[None, :] < out.logit_lengths[:, None]
        blank = jnp.argmax(out.logits, axis=-1) == model.config.pad_token_id
        counts = {
            "num_utterances": jnp.sum(jnp.any(attention_mask > 0, axis=-1), dtype=jnp.int32),
            "num_label_tokens": out.num_label_tokens,
            "num_frames": jnp.sum(real, dtype=jnp.int32),
            "num_blank_frames": jnp.sum(real & blank, dtype=jnp.int32),
        }
        return loss, {"loss": loss}, counts

    def frozen_gradients(self, grads: nnx.State, step: jax.Array) -> nnx.State:
        if self.freeze_finetune_updates <= 0:
            return grads
        frozen = step < self.freeze_finetune_updates

        def freeze(path, grad):
            in_encoder = getattr(path[0], "key", None) == "wav2vec2"
            return jnp.where(frozen, jnp.zeros_like(grad), grad) if in_encoder else grad

        return jax.tree_util.tree_map_with_path(freeze, grads)

    def metrics(
        self, sums: dict[str, jax.Array], counts: dict[str, jax.Array], accum: int, step: jax.Array
    ) -> dict[str, jax.Array]:
        utterances = counts["num_utterances"].astype(jnp.float32)
        tokens = counts["num_label_tokens"].astype(jnp.float32)
        return {
            "loss": sums["loss"] / jnp.maximum(utterances, 1.0),
            "loss_per_token": sums["loss"] / jnp.maximum(tokens, 1.0),
            "num_utterances": utterances,
            "num_label_tokens": tokens,
            "encoder_frozen": (step < self.freeze_finetune_updates).astype(jnp.float32),
            "blank_fraction": counts["num_blank_frames"].astype(jnp.float32)
            / jnp.maximum(counts["num_frames"].astype(jnp.float32), 1.0),
            "num_frames": counts["num_frames"].astype(jnp.float32),
            "num_blank_frames": counts["num_blank_frames"].astype(jnp.float32),
        }
