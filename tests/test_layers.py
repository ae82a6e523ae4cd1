"""The shared layers and helpers against NumPy oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from w2v_jax.layers import (
    ACTIVATION_FNS,
    dropout,
    layer_norm,
    linear,
    named_key,
    rematerialised,
    scale_gradient,
)


def test_dropout_is_identity_when_deterministic_or_rate_zero():
    x = jnp.ones((4, 5))
    assert dropout(x, 0.5, None, deterministic=True) is x
    assert dropout(x, 0.0, None, deterministic=False) is x
    with pytest.raises(ValueError, match="needs a key"):
        dropout(x, 0.5, None, deterministic=False)


def test_dropout_zeroes_at_rate_and_rescales():
    x = jnp.ones((200_000,))
    y = np.asarray(jax.jit(lambda k: dropout(x, 0.3, k, False))(jax.random.key(0)))
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    # Binomial standard error sqrt(0.21 / n) ~ 1e-3: 5 sigma.
    assert abs((y == 0).mean() - 0.3) < 5e-3


def test_named_keys_are_stable_and_distinct():
    key = jax.random.key(0)
    data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731
    np.testing.assert_array_equal(data(named_key(key, "mask")), data(named_key(key, "mask")))
    assert not np.array_equal(data(named_key(key, "mask")), data(named_key(key, "negatives")))


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(scale_gradient(x, 0.1), x)
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(scale_gradient(x, 0.1) ** 2))(x), 0.2 * x, rtol=1e-6)


def test_zero_scale_gives_a_zero_gradient_without_its_backward_pass():
    """A frozen input (fine-tuning's feature encoder): no matmul transposed for a gradient known to be 0."""
    x = jnp.arange(12.0).reshape(3, 4)
    w = jnp.ones((4, 5))

    def loss(w, scale):
        return jnp.sum(scale_gradient(jnp.tanh(x @ w), scale)) + jnp.sum(w)

    np.testing.assert_array_equal(jax.grad(loss)(w, 0.0), jnp.ones_like(w))
    matmuls = {s: str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(w, s)).count("dot_general") for s in (0.0, 0.1)}
    assert matmuls[0.0] < matmuls[0.1], matmuls


def test_linear_and_layer_norm_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6)).astype(np.float32) * 3 + 1
    dense = linear(6, 4, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(
        jax.jit(lambda x: dense(x))(x),
        x.astype(np.float64) @ np.asarray(dense.kernel[...]) + np.asarray(dense.bias[...]),
        rtol=1e-5,
        atol=1e-5,
    )
    # torch.nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    assert np.abs(np.asarray(dense.kernel[...])).max() <= 1 / np.sqrt(6)
    norm = layer_norm(6, 1e-5, None, nnx.Rngs(0))
    mean = x.mean(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(jax.jit(lambda x: norm(x))(x), expected, rtol=1e-5, atol=1e-5)
    assert norm.scale[...].dtype == jnp.float32


def test_activations_match_their_formulas():
    x = np.linspace(-4, 4, 33)
    np.testing.assert_allclose(ACTIVATION_FNS["gelu"](x), 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2))), atol=1e-6)
    np.testing.assert_allclose(ACTIVATION_FNS["relu"](x), np.maximum(x, 0), atol=0)
    np.testing.assert_allclose(ACTIVATION_FNS["swish"](x), x / (1 + np.exp(-x)), rtol=1e-6, atol=1e-6)


def test_rematerialised_keeps_values_and_gradients():
    def fn(params, x):
        return jnp.tanh(x @ params["w"]) * params["b"]

    params = {"w": jnp.asarray(np.random.default_rng(1).standard_normal((3, 3)), jnp.float32), "b": jnp.ones(3)}
    x = jnp.arange(6.0).reshape(2, 3) / 6

    def loss(f):
        return lambda params, x: jnp.sum(f(params, x) ** 2)

    plain = jax.jit(jax.value_and_grad(loss(fn), argnums=(0, 1)))(params, x)
    remat = jax.jit(jax.value_and_grad(loss(rematerialised(fn)), argnums=(0, 1)))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), remat, plain)
