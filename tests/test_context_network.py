"""The context network against NumPy oracles written with explicit loops and plain formulas."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from w2v_jax import layers
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.context_network import (
    ContextNetwork,
    PositionalConvEmbedding,
    SelfAttention,
    explicit_attention,
    grouped_conv,
    grouped_conv_kernel_gradient,
)
from w2v_jax.layers import dropout, named_key

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


def _keep_mask(key, rate, shape):
    """The scaled dropout mask (0 or 1 / (1 - rate)) drawn from `key`, as `layers.dropout` draws it."""
    return np.asarray(dropout(jnp.ones(shape), rate, key, False), np.float64)


def context_network_oracle(
    x, net: ContextNetwork, config, padding_mask=None, layers=None, hidden_states=None, dropout_key=None
):
    """The whole network; `layers` picks which layers run (LayerDrop's survivors).

    Without `dropout_key` no dropout; with it, the hidden, attention and activation dropout masks
    are drawn from the sub-keys the network documents (`named_key` names, layer index folded in).
    A list given as `hidden_states` receives the first layer's input and each layer's output.
    """
    eps = config.layer_norm_eps
    x = np.asarray(x, np.float64)
    batch, time, dim = x.shape

    def keep(key, rate, shape):
        return 1.0 if dropout_key is None or rate == 0.0 else _keep_mask(key, rate, shape)

    if padding_mask is not None:
        x = np.where(padding_mask[:, :, None], x, 0.0)
    x = x + positional_conv_oracle(x, net.pos_conv_embed)
    if not config.do_stable_layer_norm:
        x = _layer_norm(x, net.layer_norm, eps)
    if dropout_key is not None:
        x = x * keep(named_key(dropout_key, "input"), config.hidden_dropout, x.shape)
    if hidden_states is not None:
        hidden_states.append(x)
    for index in range(len(net.layers)) if layers is None else layers:
        layer = net.layers[index]
        layer_key = None if dropout_key is None else jax.random.fold_in(named_key(dropout_key, "layers"), index)
        sub = (lambda name: None) if layer_key is None else (lambda name, k=layer_key: named_key(k, name))
        heads = layer.attention.num_heads
        attention_keep = (
            None
            if dropout_key is None or config.attention_dropout == 0.0
            else keep(sub("attention"), config.attention_dropout, (batch, heads, time, time))
        )
        residual_keep = keep(sub("residual"), config.hidden_dropout, x.shape)

        def feed_forward(h, layer=layer, sub=sub):
            ff_key = sub("feed_forward")
            sub_ff = (lambda name: None) if ff_key is None else (lambda name: named_key(ff_key, name))
            inner = _gelu(_linear(h, layer.feed_forward.intermediate_dense))
            inner = inner * keep(sub_ff("activation"), config.activation_dropout, inner.shape)
            out = _linear(inner, layer.feed_forward.output_dense)
            return out * keep(sub_ff("output"), config.hidden_dropout, out.shape)

        if config.do_stable_layer_norm:
            normed = _layer_norm(x, layer.layer_norm, eps)
            attended = attention_oracle(normed, layer.attention, padding_mask, attention_keep)
            x = x + attended * residual_keep
            x = x + feed_forward(_layer_norm(x, layer.final_layer_norm, eps))
        else:
            attended = attention_oracle(x, layer.attention, padding_mask, attention_keep)
            x = _layer_norm(x + attended * residual_keep, layer.layer_norm, eps)
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


def _attention_and_input_gradient(module, x, padding_mask, deterministic=True, key=None):
    """The attention's output and the gradient of a fixed projection of it with respect to `x`."""
    graphdef, state = nnx.split(module)
    weights = jax.random.normal(jax.random.key(7), x.shape)

    @jax.jit
    def apply(state, x):
        def projected(x):
            out = nnx.merge(graphdef, state)(x, padding_mask, deterministic=deterministic, key=key)
            return jnp.sum(out * weights), out

        return jax.grad(projected, has_aux=True)(x)

    gradient, out = apply(state, x)
    return np.asarray(out), np.asarray(gradient)


@pytest.mark.parametrize("implementation", ["auto", "xla"])
def test_attention_implementations_agree_without_dropout(implementation):
    # Values and input gradients of the fused entry point against the spelled-out path; measured
    # worst gap 4.8e-7 in float32 (input gradients; different summation orders), bound 5e-6.
    x, padding_mask = _inputs()
    outputs = {}
    for name in (implementation, "explicit"):
        module = _random_params(SelfAttention(12, 3, dropout_rate=0.25, implementation=name, rngs=nnx.Rngs(0)))
        outputs[name] = _attention_and_input_gradient(module, x, padding_mask)
    for a, b in zip(outputs[implementation], outputs["explicit"]):
        np.testing.assert_allclose(a, b, rtol=5e-6, atol=5e-6)
    expected = attention_oracle(x.astype(np.float64), module, padding_mask)
    np.testing.assert_allclose(outputs[implementation][0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["auto", "xla", "explicit"])
def test_attention_dropout_draws_the_same_mask_on_every_cpu_path(implementation):
    # With dropout every implementation but cuDNN's takes the spelled-out path with the layer's key:
    # the oracle fed the mask drawn from that key must give the same values.
    module = _random_params(SelfAttention(12, 3, dropout_rate=0.25, implementation=implementation, rngs=nnx.Rngs(0)))
    x, padding_mask = _inputs()
    key = jax.random.key(4)
    out, _ = _attention_and_input_gradient(module, x, padding_mask, deterministic=False, key=key)
    expected = attention_oracle(x.astype(np.float64), module, padding_mask, _keep_mask(key, 0.25, (2, 3, 11, 11)))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_explicit_attention_applies_the_mask_it_is_given():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 5, 3, 4)).astype(np.float32) for _ in range(3))
    keep = (rng.random((2, 3, 5, 5)) < 0.7) / 0.7
    out = jax.jit(explicit_attention, static_argnums=4)(q, k, v, None, 0.5, keep)
    logits = np.einsum("bqnh,bknh->bnqk", q, k) * 0.5
    probs = scipy.special.softmax(logits, axis=-1) * keep
    np.testing.assert_allclose(out, np.einsum("bnqk,bknh->bqnh", probs, v), rtol=1e-5, atol=1e-5)


def test_cudnn_attention_needs_a_gpu():
    module = SelfAttention(12, 3, implementation="cudnn", rngs=nnx.Rngs(0))
    x, padding_mask = _inputs()
    with pytest.raises(ValueError, match="attention_implementation='cudnn' needs a CUDA GPU"):
        module(x, padding_mask)


def test_unknown_attention_implementation_is_refused():
    with pytest.raises(ValueError, match="attention_implementation must be one of"):
        Wav2Vec2Config.preset("tiny", attention_implementation="flash")
    with pytest.raises(ValueError, match="attention implementation must be one of"):
        SelfAttention(12, 3, implementation="flash", rngs=nnx.Rngs(0))


def test_layers_seed_cudnn_dropout_by_their_index():
    config = Wav2Vec2Config.preset("tiny", num_hidden_layers=3)
    net = ContextNetwork(config, rngs=nnx.Rngs(0))
    assert [layer.attention.dropout_seed for layer in net.layers] == [0, 1, 2]


@pytest.mark.parametrize("stable", [False, True])
def test_context_network_matches_oracle(stable):
    config = Wav2Vec2Config.preset(
        "tiny",
        hidden_size=12,
        num_attention_heads=3,
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=3,
        do_stable_layer_norm=stable,
        **NO_DROPOUT,
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


@pytest.fixture
def accelerator_paths(monkeypatch):
    """Runs the GPU/TPU code paths on the CPU: `jax.checkpoint` remat, XLA's grouped-conv gradient."""
    monkeypatch.setattr(layers, "cpu_code_paths", lambda: False)


@pytest.mark.parametrize("paths", ["cpu", "accelerator"])
def test_remat_changes_nothing_but_memory(paths, request):
    if paths == "accelerator":
        request.getfixturevalue("accelerator_paths")
    config = Wav2Vec2Config.preset(
        "tiny",
        hidden_size=12,
        num_attention_heads=3,
        num_conv_pos_embedding_groups=3,
        num_hidden_layers=1,
        hidden_dropout=0.2,
    )
    x, padding_mask = _inputs()
    weights = jax.random.normal(jax.random.key(1), x.shape)

    def loss_and_grads(remat):
        net = _random_params(ContextNetwork(config, remat=remat, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(net)

        def loss(state):
            out = nnx.merge(graphdef, state)(x, padding_mask, deterministic=False, key=jax.random.key(3))
            return jnp.sum(out * weights)

        return jax.jit(jax.value_and_grad(loss))(state)

    (plain_loss, plain_grads), (remat_loss, remat_grads) = loss_and_grads(False), loss_and_grads(True)
    # Same computation reordered: float32 rounding only (measured ~1e-7 relative).
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    chex.assert_trees_all_close(remat_grads, plain_grads, rtol=1e-5, atol=1e-6)
    # Recomputation under remat redraws the same dropout bits: with another key the loss differs.
    graphdef, state = nnx.split(_random_params(ContextNetwork(config, remat=True, rngs=nnx.Rngs(0))))
    other = jnp.sum(nnx.merge(graphdef, state)(x, padding_mask, deterministic=False, key=jax.random.key(4)) * weights)
    assert abs(float(other) - float(plain_loss)) > 1e-3 * abs(float(plain_loss))


def test_accelerator_paths_match_the_cpu_paths_and_the_kernel_gradient_oracle(accelerator_paths):
    # The positional conv's kernel gradient on the accelerator path is XLA's autodiff of the conv.
    module = _random_params(PositionalConvEmbedding(12, 8, 4, rngs=nnx.Rngs(0)))
    x, _ = _inputs()
    weights = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    assert not layers.cpu_code_paths()

    def effective_kernel_grad():
        graphdef, state = nnx.split(module)
        kernel = module.weight()

        def loss(kernel):
            merged = nnx.merge(graphdef, state)
            merged.weight = lambda: kernel  # the module's conv on a given effective kernel
            return jnp.sum(merged(x) * weights)

        return jax.jit(jax.grad(loss))(kernel)

    accelerator = effective_kernel_grad()
    # The oracle: d/dK of sum(w * gelu(conv(x, K) + b)) = kernel gradient of the cotangent w * gelu'.
    pre = np.asarray(
        jax.lax.conv_general_dilated(
            jnp.asarray(x),
            module.weight(),
            (1,),
            [(4, 4)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=4,
        )[:, :-1]
        + module.bias[...],
        np.float64,
    )
    gelu_grad = 0.5 * (1 + scipy.special.erf(pre / np.sqrt(2))) + pre * np.exp(-(pre**2) / 2) / np.sqrt(2 * np.pi)
    cotangent = np.concatenate([weights * gelu_grad, np.zeros((2, 1, 12))], axis=1)
    oracle = grouped_conv_kernel_gradient_oracle(np.asarray(x, np.float64), cotangent, 4, 4)
    np.testing.assert_allclose(accelerator, oracle, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stable", [False, True])
def test_dropout_matches_oracle_with_the_same_masks(stable):
    config = Wav2Vec2Config.preset(
        "tiny",
        hidden_size=12,
        num_attention_heads=3,
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=3,
        do_stable_layer_norm=stable,
        hidden_dropout=0.2,
        attention_dropout=0.15,
        activation_dropout=0.3,
        layerdrop=0.0,
    )
    net = _random_params(ContextNetwork(config, rngs=nnx.Rngs(0)))
    x, padding_mask = _inputs()
    key = jax.random.key(5)
    out = _jitted(net, deterministic=False)(x, padding_mask, key=key)
    expected = context_network_oracle(x, net, config, padding_mask, dropout_key=key)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_layerdrop_rate_over_many_draws():
    # Which layers ran, for 4000 keys at once (vmap): the nearest of the four survivor oracles.
    config = Wav2Vec2Config.preset(
        "tiny",
        hidden_size=12,
        num_attention_heads=3,
        num_conv_pos_embedding_groups=3,
        **(NO_DROPOUT | dict(layerdrop=0.3)),
    )
    net = _random_params(ContextNetwork(config, rngs=nnx.Rngs(0)))
    x, padding_mask = _inputs(time=6)
    padding_mask = np.ones_like(padding_mask)
    subsets = [(), (0,), (1,), (0, 1)]
    survivors = np.stack([context_network_oracle(x, net, config, padding_mask, layers) for layers in subsets])
    graphdef, state = nnx.split(net)
    n = 4000

    @jax.jit
    def distances(keys):
        out = jax.vmap(lambda k: nnx.merge(graphdef, state)(x, padding_mask, deterministic=False, key=k))(keys)
        return jnp.max(jnp.abs(out[:, None] - survivors[None].astype(np.float32)), axis=(2, 3, 4))

    d = np.asarray(distances(jax.random.split(jax.random.key(0), n)))  # [n, 4]
    nearest = d.argmin(1)
    assert d.min(1).max() < 1e-4  # every draw is exactly one of the survivor sets
    kept = np.array([[layer in subsets[i] for layer in (0, 1)] for i in nearest])  # [n, layers]
    rates = 1.0 - kept.mean(0)
    # Binomial standard error sqrt(0.3 * 0.7 / 4000) = 0.0072 per layer; a 10% error in the rate
    # (0.03) is 4.1 sigma away, and the bound is 3 sigma.
    np.testing.assert_array_less(np.abs(rates - 0.3), 0.0217)
    # One draw per layer, independent of the other layer's: the joint frequencies factorise.
    both_dropped = np.mean(~kept[:, 0] & ~kept[:, 1])
    assert abs(both_dropped - 0.09) < 3 * np.sqrt(0.09 * 0.91 / n)


def test_default_matmul_precision_within_a_stated_tolerance():
    # conftest sets "highest" everywhere; users run at the default. On XLA:CPU both are float32
    # (measured difference ~1e-7); on GPUs the default is TF32 (10-bit mantissa, ~1e-3 relative), the
    # bound users can expect, which this still asserts against the float64 oracle.
    config = Wav2Vec2Config.preset(
        "tiny", hidden_size=12, num_attention_heads=3, num_conv_pos_embedding_groups=3, **NO_DROPOUT
    )
    net = _random_params(ContextNetwork(config, rngs=nnx.Rngs(0)))
    x, padding_mask = _inputs()
    expected = context_network_oracle(x, net, config, padding_mask)
    with jax.default_matmul_precision("default"):
        out = _jitted(net)(x, padding_mask)
    np.testing.assert_allclose(out, expected, rtol=3e-3, atol=3e-3)


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
