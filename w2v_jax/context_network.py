"""The context network: a Transformer over the (masked) latent frames (wav2vec 2.0, section 2).

Relative positions come from a convolution rather than position embeddings: a grouped conv with a
wide kernel (128 samples, 16 groups for BASE/LARGE) whose weight is weight-normalised over every
axis but the kernel one (fairseq's `weight_norm(dim=2)`, one gain per kernel tap), "same" padding
with the last frame dropped for even kernels, then GELU; its output is added to the input.

Two layouts, as transformers' `Wav2Vec2Encoder` / `Wav2Vec2EncoderStableLayerNorm`:
- post-LN (BASE): LayerNorm after adding the positional conv, and after each residual block;
- pre-LN (LARGE, `do_stable_layer_norm`): LayerNorm at the start of each block, one at the end.
Training applies dropout and LayerDrop (Fan et al., 2019: each layer skipped with probability
`layerdrop`, one draw per layer for the whole batch).

Modules are used functionally: no RNG state; dropout and LayerDrop take explicit keys, split
into named sub-keys with `layers.named_key`.

Attention has several implementations (`Wav2Vec2Config.attention_implementation`,
`ATTENTION_IMPLEMENTATIONS`), equal up to rounding where they compute the same thing: without dropout
every one is softmax attention; with attention dropout the spelled-out path (`explicit_attention`)
draws its mask from the layer's key, and cuDNN's fused kernel draws its own (`cudnn_attention`).
"""

from __future__ import annotations

import functools
import math
import types

import jax
import jax.numpy as jnp
from flax import nnx

from w2v_jax import layers as layers_lib
from w2v_jax.config import ATTENTION_IMPLEMENTATIONS, AttentionImplementation, Wav2Vec2Config
from w2v_jax.layers import (
    ACTIVATION_FNS,
    INITIALIZER_RANGE,
    dropout,
    layer_norm,
    linear,
    named_key,
    rematerialised,
)

fused_attention_stablehlo: types.ModuleType | None
try:  # JAX's private cuDNN attention, the one with dropout; private APIs may move between releases.
    from jax._src.cudnn import fused_attention_stablehlo
except ImportError:
    fused_attention_stablehlo = None


def _grouped_conv(x: jax.Array, kernel: jax.Array, groups: int, padding: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1,),
        padding=[(padding, padding)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=groups,
    )


def grouped_conv_kernel_gradient(x: jax.Array, cotangent: jax.Array, groups: int, padding: int) -> jax.Array:
    """The gradient of `grouped_conv`'s kernel, computed as a forward convolution.

    `dK[k, c, g*O + o] = sum_{b,t} x_padded[b, t + k, g*C + c] * cotangent[b, t, g*O + o]`: a
    correlation over time whose window is the whole cotangent. Written as a forward grouped conv
    (the channels within a group as its batch, the utterances as its features, the cotangent as its
    kernel) it takes XLA:CPU's fast path, where XLA:CPU's own kernel gradient of a grouped conv with
    a long kernel is slow (docs/performance.md has the figures).

    Args:
      x: `[batch, time, dim_in]`, the conv's input.
      cotangent: `[batch, time_out, dim_out]`, the gradient of the conv's output.
      groups: the conv's feature groups.
      padding: zeros added on both sides of the time axis.

    Returns:
      `[kernel, dim_in // groups, dim_out]`, in `cotangent`'s dtype.
    """
    batch, _, dim_in = x.shape
    time_out, dim_out = cotangent.shape[1:]
    per_group = dim_in // groups
    padded = jnp.pad(x.astype(cotangent.dtype), ((0, 0), (padding, padding), (0, 0)))
    # [per_group, time, (group, batch)] and [time_out, batch, (group, out)]
    lhs = padded.reshape(batch, -1, groups, per_group).transpose(3, 1, 2, 0).reshape(per_group, -1, groups * batch)
    rhs = cotangent.reshape(batch, time_out, groups, dim_out // groups).transpose(1, 0, 2, 3)
    rhs = rhs.reshape(time_out, batch, dim_out)
    out = _grouped_conv(lhs, rhs, groups, padding=0)  # [per_group, kernel, dim_out]
    return out.transpose(1, 0, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def grouped_conv(x: jax.Array, kernel: jax.Array, groups: int, padding: int) -> jax.Array:
    """A stride-1 grouped conv over time with a fast kernel gradient on CPU.

    `[batch, time, dim_in]` * `[kernel, dim_in // groups, dim_out]` -> `[batch, time + 2 * padding -
    kernel + 1, dim_out]`. The values and the input's gradient are `lax.conv_general_dilated`'s; the
    kernel's gradient is `grouped_conv_kernel_gradient`.
    """
    return _grouped_conv(x, kernel, groups, padding)


def _grouped_conv_forward(
    x: jax.Array, kernel: jax.Array, groups: int, padding: int
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _grouped_conv(x, kernel, groups, padding), (x, kernel)


def _grouped_conv_backward(
    groups: int, padding: int, saved: tuple[jax.Array, jax.Array], cotangent: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x, kernel = saved
    (x_grad,) = jax.vjp(lambda x: _grouped_conv(x, kernel, groups, padding), x)[1](cotangent)
    kernel_grad = grouped_conv_kernel_gradient(x, cotangent, groups, padding)
    return x_grad, kernel_grad.astype(kernel.dtype)


grouped_conv.defvjp(_grouped_conv_forward, _grouped_conv_backward)


class PositionalConvEmbedding(nnx.Module):
    """Weight-normed grouped conv over time, "same" length, GELU: `[batch, time, dim]` -> same.

    Parameters (transformers' names): `weight_v` `[kernel, dim // groups, dim]` (the direction),
    `weight_g` `[kernel]` (one gain per tap: the norm is over every axis but the kernel one), `bias`.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        groups: int,
        *,
        activation: str = "gelu",
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        if dim % groups:
            raise ValueError(f"groups={groups} must divide dim={dim}")
        self.kernel_size = kernel_size
        self.groups = groups
        self.activation = activation
        self.dtype = dtype
        # The reference's initialisation: N(0, 2 / sqrt(kernel * dim)) weights, zero bias, and the
        # gains set to the initial norms (the effective weight starts equal to weight_v).
        std = 2.0 * math.sqrt(1.0 / (kernel_size * dim))
        weight_v = std * jax.random.normal(rngs.params(), (kernel_size, dim // groups, dim), jnp.float32)
        self.weight_v = nnx.Param(weight_v)
        self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(weight_v**2, axis=(1, 2))))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def weight(self) -> jax.Array:
        """The effective kernel `g * v / |v|`, norms taken per kernel tap, `[kernel, dim // groups, dim]`."""
        v = self.weight_v[...]
        norms = jnp.sqrt(jnp.sum(v**2, axis=(1, 2), keepdims=True))
        return v * (self.weight_g[...][:, None, None] / norms)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[batch, time, dim]` -> `[batch, time, dim]` positional embeddings."""
        dtype = self.dtype or x.dtype
        pad = self.kernel_size // 2
        # The custom kernel gradient is for XLA:CPU's slow one; GPU/TPU keep their own (cuDNN's).
        conv = grouped_conv if layers_lib.cpu_code_paths() else _grouped_conv
        y = conv(x.astype(dtype), self.weight().astype(dtype), self.groups, pad)
        if self.kernel_size % 2 == 0:
            y = y[:, :-1]  # an even kernel with symmetric padding yields one frame too many
        y = y + self.bias[...].astype(dtype)
        return ACTIVATION_FNS[self.activation](y)


def explicit_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    scale: float,
    keep: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention spelled out, with an optional dropout mask on the probabilities.

    Args:
      q, k, v: `[batch, time, heads, head_dim]`.
      mask: optional `[batch, 1, 1, time]` bool, True on the keys that may be attended to.
      scale: the logits' factor (`head_dim ** -0.5`).
      keep: optional `[batch, heads, time, time]` multiplier of the probabilities (dropout's mask,
        already divided by the keep probability: `layers.dropout` of ones).

    Returns:
      `[batch, time, heads, head_dim]`; logits and softmax in float32.
    """
    logits = jnp.einsum("bqnh,bknh->bnqk", q, k).astype(jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if keep is not None:
        probs = probs * keep.astype(probs.dtype)
    return jnp.einsum("bnqk,bknh->bqnh", probs.astype(v.dtype), v)


def cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, scale: float, dropout_rate: float, seed: int
) -> jax.Array:
    """cuDNN's fused attention (flash attention), with cuDNN's own dropout on the probabilities.

    `jax.nn.dot_product_attention(implementation="cudnn")` has no dropout argument; the kernel it
    calls does (`jax._src.cudnn.fused_attention_stablehlo.dot_product_attention`, JAX's private
    API: `compatibility_report` in `tools/accelerator_check.py` checks its signature). Its
    dropout mask comes from cuDNN's generator seeded with the static `seed`, not from a JAX key.
    Shapes as `explicit_attention`; CUDA GPUs only.
    """
    if not dropout_rate:
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
    if fused_attention_stablehlo is None:
        raise ValueError(
            f"this JAX ({jax.__version__}) has no jax._src.cudnn.fused_attention_stablehlo: no cuDNN dropout"
        )
    bias = None
    if mask is not None:  # as jax.nn.dot_product_attention passes a boolean mask to the kernel
        bias = jnp.where(mask, jnp.zeros((), q.dtype), jnp.asarray(jnp.finfo(q.dtype).min, q.dtype))
    return fused_attention_stablehlo.dot_product_attention(
        q, k, v, bias, scale=scale, seed=seed, dropout_rate=dropout_rate, qkv_layout="BTNH"
    )


class SelfAttention(nnx.Module):
    """Multi-head self-attention with a key padding mask (transformers' `Wav2Vec2Attention`).

    `implementation` (one of `ATTENTION_IMPLEMENTATIONS`):
    - "auto": `jax.nn.dot_product_attention`'s own choice without dropout (cuDNN's fused kernel on
      GPUs that have it, else XLA's), `explicit_attention` with attention dropout;
    - "explicit": always `explicit_attention` (the reference's eager layout);
    - "xla": `jax.nn.dot_product_attention(implementation="xla")` without dropout, else explicit;
    - "cudnn": `cudnn_attention`, with and without dropout (CUDA GPUs only; `dropout_seed` seeds
      cuDNN's dropout generator).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        dropout_rate: float = 0.0,
        implementation: AttentionImplementation = "auto",
        dropout_seed: int = 0,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout_rate = dropout_rate
        self.implementation = implementation
        self.dropout_seed = dropout_seed
        self.q_proj = linear(dim, dim, stddev=INITIALIZER_RANGE, dtype=dtype, rngs=rngs)
        self.k_proj = linear(dim, dim, stddev=INITIALIZER_RANGE, dtype=dtype, rngs=rngs)
        self.v_proj = linear(dim, dim, stddev=INITIALIZER_RANGE, dtype=dtype, rngs=rngs)
        self.out_proj = linear(dim, dim, stddev=INITIALIZER_RANGE, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        padding_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """`[batch, time, dim]` -> `[batch, time, dim]`.

        Args:
          x: `[batch, time, dim]`.
          padding_mask: optional `[batch, time]` bool, True on real frames: padded frames are never
            attended to (padded queries still attend to the real frames, as in the reference).
          deterministic: no attention dropout when True.
          key: dropout key (training only; unused by the "cudnn" implementation).
        """
        batch, time, _ = x.shape
        heads = (batch, time, self.num_heads, self.head_dim)
        q = self.q_proj(x).reshape(heads)
        k = self.k_proj(x).reshape(heads)
        v = self.v_proj(x).reshape(heads)
        mask = None if padding_mask is None else padding_mask[:, None, None, :]  # [batch, 1, query, key]
        scale = self.head_dim**-0.5
        rate = 0.0 if deterministic else self.dropout_rate
        if self.implementation == "cudnn":
            if jax.default_backend() != "gpu":
                raise ValueError(
                    f"attention_implementation='cudnn' needs a CUDA GPU; the default backend is {jax.default_backend()}"
                )
            out = cudnn_attention(q, k, v, mask, scale, rate, self.dropout_seed)
        elif rate or self.implementation == "explicit":
            keep = None
            if rate:
                keep = dropout(jnp.ones((batch, self.num_heads, time, time), jnp.float32), rate, key, False)
            out = explicit_attention(q, k, v, mask, scale, keep)
        else:
            implementation = None if self.implementation == "auto" else self.implementation
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)
        return self.out_proj(out.reshape(batch, time, -1))


class FeedForward(nnx.Module):
    """dim -> intermediate -> activation -> dropout -> dim -> dropout."""

    def __init__(self, config: Wav2Vec2Config, *, dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
        self.activation = config.hidden_act
        self.activation_dropout = config.activation_dropout
        self.hidden_dropout = config.hidden_dropout
        self.intermediate_dense = linear(
            config.hidden_size, config.intermediate_size, stddev=INITIALIZER_RANGE, dtype=dtype, rngs=rngs
        )
        self.output_dense = linear(
            config.intermediate_size, config.hidden_size, stddev=INITIALIZER_RANGE, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array, *, deterministic: bool = True, key: jax.Array | None = None) -> jax.Array:
        """`[batch, time, dim]` -> `[batch, time, dim]`."""
        keys = (None, None) if key is None else (named_key(key, "activation"), named_key(key, "output"))
        h = ACTIVATION_FNS[self.activation](self.intermediate_dense(x))
        h = dropout(h, self.activation_dropout, keys[0], deterministic)
        return dropout(self.output_dense(h), self.hidden_dropout, keys[1], deterministic)


class EncoderLayer(nnx.Module):
    """One Transformer block, post-LN (BASE) or pre-LN (`stable_layer_norm`, LARGE)."""

    def __init__(self, config: Wav2Vec2Config, *, index: int = 0, dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
        """`index`: the layer's position (seeds cuDNN's attention dropout, so layers draw different masks)."""
        self.stable_layer_norm = config.do_stable_layer_norm
        self.hidden_dropout = config.hidden_dropout
        self.attention = SelfAttention(
            config.hidden_size,
            config.num_attention_heads,
            dropout_rate=config.attention_dropout,
            implementation=config.attention_implementation,
            dropout_seed=index,
            dtype=dtype,
            rngs=rngs,
        )
        self.layer_norm = layer_norm(config.hidden_size, config.layer_norm_eps, dtype, rngs)
        self.feed_forward = FeedForward(config, dtype=dtype, rngs=rngs)
        self.final_layer_norm = layer_norm(config.hidden_size, config.layer_norm_eps, dtype, rngs)

    def __call__(
        self,
        x: jax.Array,
        padding_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """`[batch, time, dim]` -> `[batch, time, dim]`; `padding_mask` as `SelfAttention`."""
        keys = [None] * 3 if key is None else [named_key(key, n) for n in ("attention", "residual", "feed_forward")]
        attention_input = self.layer_norm(x) if self.stable_layer_norm else x
        h = self.attention(attention_input, padding_mask, deterministic=deterministic, key=keys[0])
        x = x + dropout(h, self.hidden_dropout, keys[1], deterministic)
        if self.stable_layer_norm:
            return x + self.feed_forward(self.final_layer_norm(x), deterministic=deterministic, key=keys[2])
        x = self.layer_norm(x)
        x = x + self.feed_forward(x, deterministic=deterministic, key=keys[2])
        return self.final_layer_norm(x)


class ContextNetwork(nnx.Module):
    """Positional conv + Transformer (transformers' `Wav2Vec2Encoder[StableLayerNorm]`).

    Parameter names follow transformers (`pos_conv_embed`, `layer_norm`, `layers[i].attention.q_proj`,
    ...) so checkpoint conversion is a renaming plus transposes.
    """

    def __init__(self, config: Wav2Vec2Config, *, dtype: jnp.dtype | None = None, remat: bool = False, rngs: nnx.Rngs):
        """Builds the network; `remat` recomputes each layer's activations in the backward pass
        (less memory, about one more forward pass of compute)."""
        self.stable_layer_norm = config.do_stable_layer_norm
        self.hidden_dropout = config.hidden_dropout
        self.layerdrop = config.layerdrop
        self.remat = remat
        self.pos_conv_embed = PositionalConvEmbedding(
            config.hidden_size,
            config.num_conv_pos_embeddings,
            config.num_conv_pos_embedding_groups,
            activation=config.feat_extract_activation,
            dtype=dtype,
            rngs=rngs,
        )
        self.layer_norm = layer_norm(config.hidden_size, config.layer_norm_eps, dtype, rngs)
        self.layers = nnx.List(
            [EncoderLayer(config, index=i, dtype=dtype, rngs=rngs) for i in range(config.num_hidden_layers)]
        )

    def __call__(
        self,
        x: jax.Array,
        padding_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        key: jax.Array | None = None,
        output_hidden_states: bool = False,
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, ...]]:
        """Contextualises frames.

        Args:
          x: `[batch, time, dim]` projected (and masked) features.
          padding_mask: optional `[batch, time]` bool, True on real frames. Padded frames are zeroed
            before the positional conv and never attended to.
          deterministic: False for training (dropout, LayerDrop).
          key: PRNG key, required in training when a dropout or LayerDrop rate is non-zero.
          output_hidden_states: also return every layer's input and the last layer's output.

        Returns:
          `[batch, time, dim]` context vectors; with `output_hidden_states`, `(context, hidden_states)`
          where `hidden_states` holds `num_hidden_layers + 1` arrays `[batch, time, dim]` as
          transformers (5.x) records them: the first layer's input (after the positional conv, the
          post-LN layer norm and dropout), then each layer's output. In the pre-LN layout the last
          one is taken before the final layer norm, so it differs from the context vectors. A layer
          skipped by LayerDrop repeats its input (transformers leaves it out).
        """
        if x.ndim != 3:
            raise ValueError(f"x must be [batch, time, dim], got shape {tuple(x.shape)}")
        if padding_mask is not None:
            if tuple(padding_mask.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"padding_mask must be [batch, time] = {tuple(x.shape[:2])}, got {tuple(padding_mask.shape)}"
                )
            x = jnp.where(padding_mask[:, :, None], x, jnp.zeros((), x.dtype))
        x = x + self.pos_conv_embed(x).astype(x.dtype)
        if not self.stable_layer_norm:
            x = self.layer_norm(x)
        x = dropout(x, self.hidden_dropout, None if key is None else named_key(key, "input"), deterministic)
        layers_key = None if key is None else named_key(key, "layers")

        def run_layer(layer: EncoderLayer, h: jax.Array, index: int | jax.Array) -> jax.Array:
            layer_key = None if layers_key is None else jax.random.fold_in(layers_key, index)
            run = functools.partial(layer, padding_mask=padding_mask, deterministic=deterministic)
            if deterministic or self.layerdrop == 0.0:
                return run(h, key=layer_key)
            if layer_key is None:
                raise ValueError("LayerDrop in training mode (deterministic=False) needs a key")
            skip = jax.random.uniform(named_key(layer_key, "layerdrop")) < self.layerdrop
            # cond, not where: a skipped layer costs nothing at run time.
            return jax.lax.cond(skip, lambda h, _: h, lambda h, k: run(h, key=k), h, layer_key)

        hidden_states = [x]
        for index, layer in enumerate(self.layers):
            if self.remat:
                # Functional form: the layer's parameters are an explicit input of the recomputation.
                graphdef, params = nnx.split(layer)

                def remat_layer(p: nnx.State, h: jax.Array, i: int = index) -> jax.Array:
                    return run_layer(nnx.merge(graphdef, p), h, i)

                x = rematerialised(remat_layer)(params, x)
            else:
                x = run_layer(layer, x, index)
            hidden_states.append(x)
        if self.stable_layer_norm:
            x = self.layer_norm(x)
        return (x, tuple(hidden_states)) if output_hidden_states else x
