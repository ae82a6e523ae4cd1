"""Layers and helpers shared by the model's parts: keys, dropout, linears, layer norms, activations.

Modules are used functionally: no RNG state. Random draws take explicit keys, split into named
sub-keys with `named_key`, so adding a draw never shifts another.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# transformers' ACT2FN entries for the names `Wav2Vec2Config` accepts ("gelu" is the exact erf GELU).
ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def named_key(key: jax.Array, name: str) -> jax.Array:
    """A sub-key that depends only on `key` and `name` (e.g. "mask", "negatives", "dropout").

    Folding a stable hash of the name in, rather than splitting in a fixed order, keeps each use's
    randomness unchanged when other uses are added or removed.
    """
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def dropout(x: jax.Array, rate: float, key: jax.Array | None, deterministic: bool) -> jax.Array:
    """Inverted dropout with an explicit key: zeroes with probability `rate`, scales the rest up.

    Identity when `deterministic` or `rate == 0` (then `key` may be None).
    """
    if deterministic or rate == 0.0:
        return x
    if key is None:
        raise ValueError(f"dropout with rate {rate} in training mode (deterministic=False) needs a key")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def cpu_code_paths() -> bool:
    """Whether to take the code paths written for XLA:CPU (the default backend is the CPU).

    `rematerialised` and the positional conv's kernel gradient pick their implementation with it
    at trace time; tests patch it to False to run the GPU/TPU paths on the CPU.
    """
    return jax.default_backend() == "cpu"


def rematerialised(fn: Callable[[Any, jax.Array], jax.Array]) -> Callable[[Any, jax.Array], jax.Array]:
    """`fn(params, x)` whose intermediate activations are recomputed in the backward pass, not kept.

    On GPU and TPU this is `jax.checkpoint`. On CPU the recomputation sits in a conditional on the
    output's cotangent instead: XLA:CPU drops `jax.checkpoint`'s optimisation barriers and merges
    the recomputation with the forward pass (base Transformer: the same 1105 MiB of temporaries with
    and without it), while a conditional branch can't be merged or hoisted (164 MiB). (On GPU a
    conditional would cost a device-to-host copy of its predicate per layer.) Only `params` and `x`
    are kept; random draws inside `fn` (dropout) come from keys it closes over, so the
    recomputation draws the same bits.

    Args:
      fn: a function of a parameter pytree and a `[batch, time, dim]` array.

    Returns:
      the same function, with the memory profile of a rematerialised one.
    """

    if not cpu_code_paths():
        return jax.checkpoint(fn)

    @jax.custom_vjp
    def wrapped(params: Any, x: jax.Array) -> jax.Array:
        return fn(params, x)

    def forward(params: Any, x: jax.Array) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        return fn(params, x), (params, x)

    def backward(saved: tuple[Any, jax.Array], cotangent: jax.Array) -> tuple[Any, jax.Array]:
        def recompute(cotangent: jax.Array) -> tuple[Any, jax.Array]:
            return jax.vjp(fn, *saved)[1](cotangent)

        def not_finite(cotangent: jax.Array) -> tuple[Any, jax.Array]:
            return jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), saved)

        # True unless the cotangent is NaN (then the gradients would be too), but XLA can't know:
        # the recomputation stays in the backward pass.
        probe = cotangent.reshape(-1)[0]
        return jax.lax.cond(probe == probe, recompute, not_finite, cotangent)

    wrapped.defvjp(forward, backward)
    return wrapped


# transformers' initializer_range (and fairseq's init_bert_params): N(0, 0.02) Transformer weights.
INITIALIZER_RANGE = 0.02


def linear(
    in_features: int,
    out_features: int,
    *,
    stddev: float | None = None,
    dtype: jnp.dtype | None = None,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """An `nnx.Linear` with float32 parameters, initialised as the reference initialises it.

    Args:
      stddev: N(0, stddev) weights and zero bias (the Transformer's linears); None for
        `torch.nn.Linear`'s default, weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (the
        feature projection, project_hid and project_q).
    """
    if stddev is None:
        bound = 1.0 / math.sqrt(in_features)

        def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        kernel_init = bias_init = init
    else:
        kernel_init, bias_init = nnx.initializers.normal(stddev), nnx.initializers.zeros
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def layer_norm(dim: int, eps: float, dtype: jnp.dtype | None, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """torch.nn.LayerNorm's statistics (two-pass variance) with float32 parameters."""
    return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, rngs=rngs)


def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """Identity forward, gradient times `scale` backward (fairseq's GradMultiply).

    A zero scale stops the gradient: the same zero gradient, but the backward pass through what
    made `x` is not computed at all (fairseq runs a frozen feature encoder under `torch.no_grad`),
    where a gradient multiplied by zero would still be computed by XLA.
    """
    if scale == 0.0:
        return jax.lax.stop_gradient(x)
    return _multiplied_gradient(x, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _multiplied_gradient(x: jax.Array, scale: float) -> jax.Array:
    return x


def _multiplied_gradient_fwd(x: jax.Array, scale: float) -> tuple[jax.Array, None]:
    return x, None


def _multiplied_gradient_bwd(scale: float, _: None, g: jax.Array) -> tuple[jax.Array]:
    return (g * scale,)


_multiplied_gradient.defvjp(_multiplied_gradient_fwd, _multiplied_gradient_bwd)
