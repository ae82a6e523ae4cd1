"""The context network against NumPy oracles written with explicit loops and plain formulas."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.context_network import (
    ContextNetwork,
    PositionalConvEmbedding,
    SelfAttention,
    grouped_conv,
    grouped_conv_kernel_gradient,
)
from w2v_jax.layers import dropout

NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0)


def _np(x) -> np.ndarray:
    return np.asarray(x[...] if isinstance(x, nnx.Variable) else x, np.float64)


def _gelu(x):
    return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def _layer_norm(x, module, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * _np(module.scale) + _np(module.bias)


def _linear(x, module):
    return x @ _np(module.kernel) + _np(module.bias)


def positional_conv_oracle(x, module: PositionalConvEmbedding):
    """[B, T, C]: weight norm per kernel tap, grouped conv with K // 2 zeros each side, loops."""
    v, g, bias = _np(module.weight_v), _np(module.weight_g), _np(module.bias)
    kernel_size, per_group, channels = v.shape
    weight = v * (g / np.sqrt((v**2).sum(axis=(1, 2))))[:, None, None]
    pad = kernel_size // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
    time = x.shape[1]
    out = np.zeros((x.shape[0], time, channels))
    out_per_group = channels // module.groups
    for t in range(time):  # the last frame of an even kernel's output is dropped by not computing it
        window = padded[:, t : t + kernel_size]  # [B, K, C]
        for o in range(channels):
            group = o // out_per_group
            inputs = window[:, :, group * per_group : (group + 1) * per_group]  # [B, K, C / groups]
            out[:, t, o] = np.einsum("bki,ki->b", inputs, weight[:, :, o]) + bias[o]
    return _gelu(out)


def attention_oracle(x, module: SelfAttention, padding_mask=None, keep=None):
    """Softmax attention per utterance and head; `keep` is the (scaled) dropout mask of the probabilities."""
    batch, time, dim = x.shape
    heads, head_dim = module.num_heads, module.head_dim
    projections = (module.q_proj, module.k_proj, module.v_proj)
    q, k, v = (_linear(x, m).reshape(batch, time, heads, head_dim) for m in projections)
    out = np.zeros((batch, time, heads, head_dim))
    for b in range(batch):
        for n in range(heads):
            logits = q[b, :, n] @ k[b, :, n].T / np.sqrt(head_dim)
            if padding_mask is not None:
                logits[:, ~padding_mask[b]] = -np.inf
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            if keep is not None:
                probs = probs * keep[b, n]
            out[b, :, n] = probs @ v[b, :, n]
    return _linear(out.reshape(batch, time, dim), module.out_proj)


def context_network_oracle(x, net: ContextNetwork, config, padding_mask=None, layers=None, hidden_states=None):
    """The whole network (no dropout); `layers` picks which layers run (LayerDrop's survivors).

    A list given as `hidden_states` receives the first layer's input and each layer's output.
    """
    eps = config.layer_norm_eps
    x = np.asarray(x, np.float64)
    if padding_mask is not None:
        x = np.where(padding_mask[:, :, None], x, 0.0)
    x = x + positional_conv_oracle(x, net.pos_conv_embed)
    if not config.do_stable_layer_norm:
        x = _layer_norm(x, net.layer_norm, eps)
    if hidden_states is not None:
        hidden_states.append(x)
    for index in range(len(net.layers)) if layers is None else layers:
        layer = net.layers[index]

        def feed_forward(h, layer=layer):
            return _linear(_gelu(_linear(h, layer.feed_forward.intermediate_dense)), layer.feed_forward.output_dense)

        if config.do_stable_layer_norm:
            x = x + attention_oracle(_layer_norm(x, layer.layer_norm, eps), layer.attention, padding_mask)
            x = x + feed_forward(_layer_norm(x, layer.final_layer_norm, eps))
        else:
            x = _layer_norm(x + attention_oracle(x, layer.attention, padding_mask), layer.layer_norm, eps)
            x = _layer_norm(x + feed_forward(x), layer.final_layer_norm, eps)
        if hidden_states is not None:
            hidden_states.append(x)
    if config.do_stable_layer_norm:
        x = _layer_norm(x, net.layer_norm, eps)
    return x


def _jitted(module, **kwargs):
    """`module(x, mask)` under jax.jit, the NNX way: split once, merge inside."""
    graphdef, state = nnx.split(module)

    @jax.jit
    def apply(state, *args, **call_kwargs):
        return nnx.merge(graphdef, state)(*args, **call_kwargs, **kwargs)

    return functools.partial(apply, state)


def _random_params(module, seed=1):
    """Replaces every parameter with N(0, 0.3^2) + its init (LayerNorm gains away from 1, biases non-zero)."""
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(
        module, jax.tree.unflatten(treedef, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    )
    return module


def _inputs(batch=2, time=11, dim=12, seed=0):
    x = np.random.default_rng(seed).standard_normal((batch, time, dim)).astype(np.float32)
    padding_mask = np.arange(time)[None, :] < np.array([time, time - 4])[:, None]
    return x, padding_mask


@pytest.mark.parametrize("kernel_size, groups", [(8, 4), (5, 3), (4, 1)])
def test_positional_conv_matches_oracle(kernel_size, groups):
    module = _random_params(PositionalConvEmbedding(12, kernel_size, groups, rngs=nnx.Rngs(0)))
    x, _ = _inputs()
    out = _jitted(module)(x)
    chex.assert_shape(out, x.shape)
    np.testing.assert_allclose(out, positional_conv_oracle(x.astype(np.float64), module), rtol=1e-5, atol=1e-5)


def grouped_conv_kernel_gradient_oracle(x, cotangent, groups, padding):
    """dK[k, c, o] = sum over utterances and output frames of x_padded[t + k, c of o's group] * dy[t, o]."""
    padded = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
    time_out, dim_out = cotangent.shape[1:]
    per_group, out_per_group = x.shape[2] // groups, dim_out // groups
    kernel_size = padded.shape[1] - time_out + 1
    grad = np.zeros((kernel_size, per_group, dim_out))
    for k in range(kernel_size):
        for o in range(dim_out):
            group = o // out_per_group
            inputs = padded[:, k : k + time_out, group * per_group : (group + 1) * per_group]  # [B, T', C/G]
            grad[k, :, o] = np.einsum("btc,bt->c", inputs, cotangent[:, :, o])
    return grad


@pytest.mark.parametrize(
    "kernel_size, groups, padding, dim_in, dim_out",
    [(8, 4, 4, 12, 12), (5, 3, 2, 6, 9), (4, 1, 0, 5, 7), (7, 2, 3, 4, 2)],
)
def test_grouped_conv_kernel_gradient_matches_oracle_and_autodiff(kernel_size, groups, padding, dim_in, dim_out):
    rng = np.random.default_rng(kernel_size)
    x = rng.standard_normal((3, 10, dim_in)).astype(np.float32)
    kernel = rng.standard_normal((kernel_size, dim_in // groups, dim_out)).astype(np.float32)
    conv = functools.partial(grouped_conv, groups=groups, padding=padding)
    out = jax.jit(conv)(x, kernel)
    cotangent = rng.standard_normal(out.shape).astype(np.float32)
    gradient = jax.jit(grouped_conv_kernel_gradient, static_argnums=(2, 3))(x, cotangent, groups, padding)
    chex.assert_shape(gradient, kernel.shape)
    oracle = grouped_conv_kernel_gradient_oracle(x.astype(np.float64), cotangent.astype(np.float64), groups, padding)
    np.testing.assert_allclose(gradient, oracle, rtol=1e-5, atol=1e-5)
    # The custom VJP: both gradients equal XLA's own autodiff of the same conv.
    plain = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=(1,),
        padding=[(padding, padding)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=groups,
    )
    ours = jax.jit(jax.vjp(conv, x, kernel)[1])(cotangent)
    xla = jax.jit(jax.vjp(plain, x, kernel)[1])(cotangent)
    np.testing.assert_allclose(out, plain(x, kernel), rtol=1e-5, atol=1e-5)
    for a, b in zip(ours, xla):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_positional_conv_starts_as_its_direction():
    # weight_g is initialised to the per-tap norms of weight_v, as weight_norm does.
    module = PositionalConvEmbedding(12, 8, 4, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(module.weight(), module.weight_v[...], rtol=1e-6)


def test_attention_matches_oracle_with_padding():
    module = _random_params(SelfAttention(12, 3, rngs=nnx.Rngs(0)))
    x, padding_mask = _inputs()
    out = _jitted(module)(x, padding_mask)
    np.testing.assert_allclose(out, attention_oracle(x.astype(np.float64), module, padding_mask), rtol=1e-5, atol=1e-5)


def test_attention_dropout_matches_oracle_with_the_same_mask():
    module = _random_params(SelfAttention(12, 3, dropout_rate=0.25, rngs=nnx.Rngs(0)))
    x, padding_mask = _inputs()
    key = jax.random.key(4)
    out = _jitted(module, deterministic=False)(x, padding_mask, key=key)
    # The probabilities' dropout mask, drawn as the module draws it.
    keep = np.asarray(dropout(jnp.ones((2, 3, 11, 11)), 0.25, key, False), np.float64)
    expected = attention_oracle(x.astype(np.float64), module, padding_mask, keep)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stable", [False, True])
def test_context_network_matches_oracle(stable):
    config = Wav2Vec2Config.preset(
        "tiny", hidden_size=12, num_attention_heads=3, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=3,
        do_stable_layer_norm=stable, **NO_DROPOUT,
    )
    net = _random_params(ContextNetwork(config, rngs=nnx.Rngs(0)))
    x, padding_mask = _inputs()
    expected = context_network_oracle(x, net, config, padding_mask)
    # Training mode without any dropout rate computes the same function as evaluation.
    out = _jitted(net, deterministic=False)(x, padding_mask, key=jax.random.key(0))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    expected_states = []
    context_network_oracle(x, net, config, padding_mask, hidden_states=expected_states)
    out, states = _jitted(net, output_hidden_states=True)(x, padding_mask)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert len(states) == config.num_hidden_layers + 1
    for state, expected_state in zip(states, expected_states, strict=True):
        np.testing.assert_allclose(state, expected_state, rtol=1e-5, atol=1e-5)


def test_padded_frames_do_not_reach_real_frames():
    config = Wav2Vec2Config.preset("tiny", hidden_size=12, num_attention_heads=3, num_conv_pos_embedding_groups=3)
    apply = _jitted(ContextNetwork(config, rngs=nnx.Rngs(0)))
    x, padding_mask = _inputs()
    noisy = np.where(padding_mask[:, :, None], x, 100.0 * np.random.default_rng(1).standard_normal(x.shape))
    real = padding_mask[:, :, None]
    np.testing.assert_allclose(
        np.where(real, apply(x, padding_mask), 0), np.where(real, apply(noisy, padding_mask), 0), atol=1e-6
    )


def test_layerdrop_keeps_each_layer_with_probability_one_minus_p():
    config = Wav2Vec2Config.preset(
        "tiny", hidden_size=12, num_attention_heads=3, num_conv_pos_embedding_groups=3,
        **(NO_DROPOUT | dict(layerdrop=0.5)),
    )
    net = ContextNetwork(config, rngs=nnx.Rngs(0))
    x, padding_mask = _inputs()
    survivors = {
        layers: context_network_oracle(x, net, config, padding_mask, layers) for layers in [(), (0,), (1,), (0, 1)]
    }
    apply = _jitted(net, deterministic=False)
    n = 200
    counts = dict.fromkeys(survivors, 0)
    for key in jax.random.split(jax.random.key(0), n):
        out = np.asarray(apply(x, padding_mask, key=key))
        match = [layers for layers, ref in survivors.items() if np.allclose(out, ref, rtol=1e-5, atol=1e-5)]
        assert len(match) == 1
        counts[match[0]] += 1
    # Each subset has probability 1/4: binomial standard error sqrt(3 / 16 / n) ~ 0.03, 4 sigma.
    for layers, count in counts.items():
        assert abs(count / n - 0.25) < 0.125, (layers, count)


def test_remat_changes_nothing_but_memory():
    config = Wav2Vec2Config.preset(
        "tiny", hidden_size=12, num_attention_heads=3, num_conv_pos_embedding_groups=3, num_hidden_layers=1
    )
    x, padding_mask = _inputs()
    weights = jax.random.normal(jax.random.key(1), x.shape)

    def loss_and_grads(remat):
        graphdef, state = nnx.split(ContextNetwork(config, remat=remat, rngs=nnx.Rngs(0)))

        def loss(state):
            return jnp.sum(nnx.merge(graphdef, state)(x, padding_mask) * weights)

        return jax.jit(jax.value_and_grad(loss))(state)

    (plain_loss, plain_grads), (remat_loss, remat_grads) = loss_and_grads(False), loss_and_grads(True)
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    chex.assert_trees_all_close(remat_grads, plain_grads, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_with_float32_params():
    config = Wav2Vec2Config.preset("tiny", hidden_size=12, num_attention_heads=3, num_conv_pos_embedding_groups=3)
    full = ContextNetwork(config, rngs=nnx.Rngs(0))
    half = ContextNetwork(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(half, nnx.Param)))
    x, padding_mask = _inputs()
    out = _jitted(half)(jnp.asarray(x, jnp.bfloat16), padding_mask)
    assert out.dtype == jnp.bfloat16
    # bf16 keeps 8 bits of mantissa: agreement to a few percent of the output scale.
    np.testing.assert_allclose(np.asarray(out, np.float32), _jitted(full)(x, padding_mask), atol=0.1)


def test_bad_inputs_raise_value_errors():
    config = Wav2Vec2Config.preset("tiny", hidden_size=12, num_attention_heads=3, num_conv_pos_embedding_groups=3)
    net = ContextNetwork(config, rngs=nnx.Rngs(0))
    x, padding_mask = _inputs()
    with pytest.raises(ValueError, match="padding_mask must be"):
        net(x, padding_mask[:, :-1])
    with pytest.raises(ValueError, match="needs a key"):
        net(x, padding_mask, deterministic=False)
    with pytest.raises(ValueError, match="must divide"):
        SelfAttention(12, 5, rngs=nnx.Rngs(0))
