"""The seed notebook's cell 9 as a test: audio -> encoder -> quantizer -> mask -> negatives -> losses -> gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.contrastive_loss import contrastive_loss, diversity_loss, sample_negatives
from w2v_jax.feature_encoder import FeatureEncoder
from w2v_jax.quantization import GumbelVectorQuantizer


def test_cell9_pipeline_has_finite_non_zero_gradients():
    d_model, groups, num_vars, num_negatives, alpha = 32, 2, 16, 10, 0.1
    encoder = FeatureEncoder(d_model=d_model, rngs=nnx.Rngs(0))
    quantizer = GumbelVectorQuantizer(d_model, groups, num_vars, rngs=nnx.Rngs(1))
    key_wave, key_mask, key_gumbel, key_neg = jax.random.split(jax.random.key(42), 4)
    waveform = jax.random.normal(key_wave, (2, 16000))
    frames = encoder.compute_output_length(16000)
    # The seed's simplified mask (independent frames), dense enough for 10 negatives per utterance.
    mask = jax.random.bernoulli(key_mask, 0.5, (2, frames))
    mask = mask.at[:, : num_negatives + 1].set(True)

    @jax.jit
    def loss_fn(models):
        encoder, quantizer = models
        z = encoder(waveform)
        chex.assert_shape(z, (2, frames, d_model))
        q, usage = quantizer(z, temperature=2.0, key=key_gumbel, deterministic=False, mask=mask)
        chex.assert_shape(q, (2, frames, d_model))
        negatives = sample_negatives(key_neg, q, num_negatives, mask=mask)
        chex.assert_shape(negatives, (2, frames, num_negatives, d_model))
        context = z  # the seed's simplification: context = latent
        l_m = contrastive_loss(context, q, negatives, temperature=0.1, mask=mask)
        l_d = diversity_loss(usage.probs, groups, num_vars)
        return l_m + alpha * l_d, (l_m, l_d)

    (loss, (l_m, l_d)), grads = nnx.value_and_grad(loss_fn, has_aux=True)((encoder, quantizer))
    assert np.isfinite(float(loss)) and float(l_m) > 0 and 0 <= float(l_d) < 1
    enc_grads, quant_grads = grads
    for grad in (
        enc_grads.layers[0].conv.kernel[...],
        quant_grads.codevectors[...],
        quant_grads.weight_proj.kernel[...],
    ):
        assert bool(jnp.all(jnp.isfinite(grad)))
        assert float(jnp.abs(grad).sum()) > 0
