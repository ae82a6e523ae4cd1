"""GumbelVectorQuantizer against its NumPy oracle; Gumbel statistics; temperature schedule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2v_jax.quantization import (
    GumbelVectorQuantizer,
    code_perplexity,
    gumbel_noise,
    gumbel_quantize_from_scratch,
    gumbel_temperature,
    quantize_from_scratch,
)

# float32 oracle checks (see test_feature_encoder): 1e-5 relative.
RTOL, ATOL = 1e-5, 1e-6


def test_quantize_from_scratch_picks_nearest_codeword():
    rng = np.random.default_rng(42)
    x = rng.standard_normal((10, 8)).astype(np.float32)
    codebook = rng.standard_normal((16, 8)).astype(np.float32)
    quantized, indices = quantize_from_scratch(x, codebook)
    brute = [min(range(16), key=lambda v, t=t: np.sum((x[t] - codebook[v]) ** 2)) for t in range(10)]
    np.testing.assert_array_equal(indices, brute)
    np.testing.assert_array_equal(quantized, codebook[indices])


def _quantizer(codevector_dim=None, groups=2, num_vars=6, input_dim=12):
    return GumbelVectorQuantizer(input_dim, groups, num_vars, codevector_dim, rngs=nnx.Rngs(0))


def _oracle_inputs(quantizer):
    weight = np.asarray(quantizer.weight_proj.kernel[...])
    bias = np.asarray(quantizer.weight_proj.bias[...])
    return weight, bias, np.asarray(quantizer.codevectors[...])


@pytest.mark.parametrize("groups,num_vars,codevector_dim", [(2, 6, None), (1, 5, 7), (3, 4, 9)])
def test_eval_mode_matches_oracle(groups, num_vars, codevector_dim):
    quantizer = _quantizer(codevector_dim, groups, num_vars)
    x = jax.random.normal(jax.random.key(1), (2, 7, 12))
    mask = jax.random.bernoulli(jax.random.key(2), 0.5, (2, 7))
    q, usage = jax.jit(lambda m, x, mask: m(x, mask=mask))(quantizer, x, mask)
    dim = codevector_dim or 12
    chex.assert_shape(q, (2, 7, dim))
    chex.assert_shape(usage.probs, (groups, num_vars))
    chex.assert_shape(usage.indices, (2, 7, groups))
    ref_q, ref_probs, ref_ppl = gumbel_quantize_from_scratch(
        np.asarray(x), *_oracle_inputs(quantizer), groups, mask=np.asarray(mask)
    )
    np.testing.assert_allclose(q, ref_q, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(usage.probs, ref_probs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(usage.perplexity, ref_ppl, rtol=RTOL)


def test_training_mode_matches_oracle_with_the_same_noise():
    quantizer = _quantizer()
    x = jax.random.normal(jax.random.key(1), (2, 5, 12))
    key = jax.random.key(9)
    q, usage = jax.jit(lambda m, x: m(x, temperature=0.7, key=key, deterministic=False))(quantizer, x)
    gumbels = np.asarray(gumbel_noise(key, (2, 5, 2, 6)))
    ref_q, ref_probs, ref_ppl = gumbel_quantize_from_scratch(
        np.asarray(x), *_oracle_inputs(quantizer), 2, gumbels=gumbels, temperature=0.7
    )
    np.testing.assert_allclose(q, ref_q, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(usage.probs, ref_probs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(usage.perplexity, ref_ppl, rtol=RTOL)


def test_output_is_input_shaped_by_default():
    quantizer = GumbelVectorQuantizer(input_dim=32, num_groups=2, num_vars=10, rngs=nnx.Rngs(0))
    assert quantizer.dim_per_group == 16
    q, _ = quantizer(jnp.ones((2, 3, 32)))
    assert q.shape == (2, 3, 32)


def test_straight_through_gradient_reaches_logits_and_codebook():
    quantizer = _quantizer()
    x = jax.random.normal(jax.random.key(1), (2, 5, 12))

    def loss(model):
        q, _ = model(x, temperature=1.0, key=jax.random.key(0), deterministic=False)
        return jnp.sum(q * jnp.arange(q.shape[-1]))

    grads = nnx.grad(loss)(quantizer)
    assert float(jnp.abs(grads.weight_proj.kernel[...]).sum()) > 0
    assert float(jnp.abs(grads.codevectors[...]).sum()) > 0
    # Evaluation mode is an argmax: no gradient reaches the logits.
    eval_grads = nnx.grad(lambda m: jnp.sum(m(x)[0]))(quantizer)
    assert float(jnp.abs(eval_grads.weight_proj.kernel[...]).sum()) == 0


def test_straight_through_gradient_is_the_soft_samples_gradient():
    # Straight-through: the forward value is the hard one-hot's, the gradient the soft sample's.
    # For a loss linear in the quantized frames, the gradient reaching the logits (and everything
    # before them) is exactly jax.grad of the same loss on the soft sample; the codewords' gradient
    # is the hard choice's.
    quantizer = _quantizer()
    x = jax.random.normal(jax.random.key(1), (2, 5, 12))
    key, temperature = jax.random.key(0), 0.7
    weights = jax.random.normal(jax.random.key(2), (2, 5, 12))
    graphdef, state = nnx.split(quantizer)

    def straight_through(state, x):
        q, _ = nnx.merge(graphdef, state)(x, temperature=temperature, key=key, deterministic=False)
        return jnp.sum(q * weights)

    def soft_sample(state, x):
        model = nnx.merge(graphdef, state)
        logits = model.weight_proj(x).reshape(2, 5, 2, 6)
        soft = jax.nn.softmax((logits + gumbel_noise(key, logits.shape)) / temperature, axis=-1)
        q = jnp.einsum("btgv,gvd->btgd", soft, model.codevectors[...].reshape(2, 6, 6)).reshape(2, 5, 12)
        return jnp.sum(q * weights)

    ours = jax.jit(jax.grad(straight_through, argnums=(0, 1)))(state, x)
    soft = jax.jit(jax.grad(soft_sample, argnums=(0, 1)))(state, x)
    np.testing.assert_allclose(ours[1], soft[1], rtol=1e-5, atol=1e-6)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(
            ours[0]["weight_proj"][name][...], soft[0]["weight_proj"][name][...], rtol=1e-5, atol=1e-6
        )
    # Codewords: d/dC of sum(w * C[hard choice]) = the weights summed over the frames choosing each.
    _, usage = quantizer(x, temperature=temperature, key=key, deterministic=False)
    indices = np.asarray(usage.indices)
    w = np.asarray(weights).reshape(2, 5, 2, 6)
    expected = np.zeros((12, 6))
    for b, t, g in np.ndindex(2, 5, 2):
        expected[g * 6 + indices[b, t, g]] += w[b, t, g]
    np.testing.assert_allclose(ours[0]["codevectors"][...], expected, rtol=1e-5, atol=1e-6)


def test_training_mode_with_a_mask_matches_oracle():
    # The usage statistics average the softmax probabilities over the masked frames only.
    quantizer = _quantizer(groups=3, num_vars=4, codevector_dim=9)
    x = jax.random.normal(jax.random.key(1), (2, 7, 12))
    mask = np.zeros((2, 7), bool)
    mask[0, 1:4] = mask[1, 5] = True
    key = jax.random.key(3)
    q, usage = jax.jit(lambda m, x, mask: m(x, temperature=1.3, key=key, deterministic=False, mask=mask))(
        quantizer, x, mask
    )
    gumbels = np.asarray(gumbel_noise(key, (2, 7, 3, 4)))
    ref_q, ref_probs, ref_ppl = gumbel_quantize_from_scratch(
        np.asarray(x), *_oracle_inputs(quantizer), 3, gumbels=gumbels, temperature=1.3, mask=mask
    )
    np.testing.assert_allclose(q, ref_q, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(usage.probs, ref_probs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(usage.perplexity, ref_ppl, rtol=RTOL)


def test_gumbel_argmax_frequencies_match_softmax():
    # argmax(logits + Gumbel) is a sample of softmax(logits), whatever the temperature.
    logits = jnp.array([1.0, 0.0, -1.0, 2.0])
    n = 200_000
    noise = gumbel_noise(jax.random.key(0), (n, 4))
    for tau in (0.5, 2.0):
        choices = jnp.argmax((logits + noise) / tau, axis=-1)
        freq = np.bincount(np.asarray(choices), minlength=4) / n
        expected = np.asarray(jax.nn.softmax(logits))
        # Each frequency within 3 of its binomial standard errors sqrt(p (1 - p) / n): a 10% error
        # in any probability (the smallest, 0.032, has 3.9e-4) is at least 8 of them.
        np.testing.assert_array_less(np.abs(freq - expected), 3 * np.sqrt(expected * (1 - expected) / n))


def test_gumbel_noise_is_finite():
    assert bool(jnp.all(jnp.isfinite(gumbel_noise(jax.random.key(3), (1_000_000,)))))


def test_training_requires_key():
    with pytest.raises(ValueError, match="key"):
        _quantizer()(jnp.ones((1, 2, 12)), deterministic=False)


def test_mask_shape_checked():
    with pytest.raises(ValueError, match="mask shape"):
        _quantizer()(jnp.ones((1, 2, 12)), mask=jnp.ones((1, 3), bool))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(input_dim=8, num_groups=3, num_vars=4, codevector_dim=8), "divisible"),
        (dict(input_dim=8, num_groups=2, num_vars=1), "num_vars"),
        (dict(input_dim=8, num_groups=0, num_vars=4), "num_groups"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GumbelVectorQuantizer(**kwargs, rngs=nnx.Rngs(0))


def test_perplexity_bounds():
    assert float(code_perplexity(jnp.full((2, 320), 1 / 320))) == pytest.approx(640, rel=1e-5)
    assert float(code_perplexity(jax.nn.one_hot(jnp.array([3, 7]), 320))) == pytest.approx(2.0)


def test_gumbel_temperature_schedule():
    assert gumbel_temperature(0) == 2.0
    assert gumbel_temperature(10**7) == 0.5
    assert gumbel_temperature(10**7, end=0.1) == pytest.approx(max(2.0 * 0.999995**10**7, 0.1))
    steps = jnp.array([0, 1000, 100_000, 10**6])
    expected = [max(2.0 * 0.999995 ** int(s), 0.5) for s in steps]
    np.testing.assert_allclose(jax.jit(gumbel_temperature)(steps), expected, rtol=1e-5)


def test_training_targets_with_equal_codewords_are_bitwise_equal():
    # Frames that pick the same codewords must get identical targets (the -inf rule of the
    # contrastive logits relies on it); a careless straight-through sum leaves rounding residue.
    quantizer = GumbelVectorQuantizer(8, 1, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 50, 8))
    q, usage = quantizer(x, temperature=2.0, key=jax.random.key(2), deterministic=False)
    q = np.asarray(q).reshape(-1, 8)
    chosen = np.asarray(usage.indices).reshape(-1)
    for code in (0, 1):
        rows = q[chosen == code]
        assert len(rows) > 1
        assert np.all(rows == rows[0])
