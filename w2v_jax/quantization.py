"""Product quantisation of the latent frames with a Gumbel-softmax codebook.

wav2vec 2.0 (section 2.2) discretises each latent frame into G codewords, one from each of G
codebooks of V entries, and concatenates them. The choice is made differentiable with the
straight-through Gumbel-softmax (Jang et al., 2016): the forward pass uses the hard one-hot sample,
the backward pass the gradient of the soft sample. The temperature is annealed from 2 to 0.5
(BASE) by `gumbel_temperature`, and is an argument of the forward pass rather than module state,
so it can be a function of the step inside a jitted train step.

`quantize_from_scratch` is the seed notebook's nearest-codeword quantiser in NumPy.
"""

from __future__ import annotations

import math
from typing import NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def quantize_from_scratch(x: np.ndarray, codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-codeword vector quantisation (Euclidean), in NumPy.

    Args:
      x: `[time, dim]` vectors.
      codebook: `[num_codewords, dim]`.

    Returns:
      `(quantized [time, dim], indices [time])` with `quantized[t] == codebook[indices[t]]`.
    """
    x = np.asarray(x)
    codebook = np.asarray(codebook)
    if x.ndim != 2 or codebook.ndim != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"x must be [time, dim] and codebook [V, dim], got {x.shape} and {codebook.shape}")
    # ||x - c||^2 for every pair, then the closest codeword.
    distances = ((x[:, None, :] - codebook[None, :, :]) ** 2).sum(axis=-1)
    indices = distances.argmin(axis=1)
    return codebook[indices], indices


def gumbel_quantize_from_scratch(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    codevectors: np.ndarray,
    num_groups: int,
    *,
    gumbels: np.ndarray | None = None,
    temperature: float = 1.0,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The Gumbel product quantiser's forward pass in NumPy, frame by frame (the module's oracle).

    Args:
      x: `[batch, time, input_dim]`.
      weight, bias: the logit projection, `[input_dim, G * V]` and `[G * V]`.
      codevectors: `[G * V, dim_per_group]`.
      num_groups: G.
      gumbels: `[batch, time, G, V]` Gumbel noise for a training-mode sample; None for evaluation
        (argmax of the logits, usage from the one-hot choices).
      temperature: the Gumbel-softmax temperature (training only).
      mask: `[batch, time]` bool, the frames the usage statistics average over.

    Returns:
      `(quantized [batch, time, G * dim_per_group], marginal probs [G, V], perplexity)`.
    """
    batch, time, _ = x.shape
    num_vars = weight.shape[1] // num_groups
    mask = np.ones((batch, time), bool) if mask is None else np.asarray(mask, bool)
    quantized = np.zeros((batch, time, num_groups * codevectors.shape[1]), np.float32)
    usage_sum = np.zeros((num_groups, num_vars), np.float64)
    for b in range(batch):
        for t in range(time):
            logits = (x[b, t] @ weight + bias).reshape(num_groups, num_vars)
            for g in range(num_groups):
                if gumbels is None:
                    choice = int(np.argmax(logits[g]))
                    usage = np.eye(num_vars)[choice]
                else:
                    choice = int(np.argmax((logits[g] + gumbels[b, t, g]) / temperature))
                    usage = np.exp(logits[g] - logits[g].max())
                    usage /= usage.sum()
                quantized[b, t, g * codevectors.shape[1] : (g + 1) * codevectors.shape[1]] = codevectors[
                    g * num_vars + choice
                ]
                if mask[b, t]:
                    usage_sum[g] += usage
    probs = usage_sum / max(mask.sum(), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(probs > 0, probs * np.log(probs), 0.0), axis=-1)
    return quantized, probs.astype(np.float32), float(np.exp(entropy).sum())


def gumbel_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard Gumbel noise `-log(-log(u))`, `u ~ U(0, 1)`, float32."""
    # Clip the uniform draw away from 0: log(0) would make the noise (and the loss) NaN.
    uniform = jax.random.uniform(key, shape, jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    return -jnp.log(-jnp.log(uniform))


@overload
def gumbel_temperature(step: int | float, start: float = ..., end: float = ..., decay: float = ...) -> float: ...
@overload
def gumbel_temperature(step: jax.Array, start: float = ..., end: float = ..., decay: float = ...) -> jax.Array: ...
def gumbel_temperature(
    step: int | float | jax.Array, start: float = 2.0, end: float = 0.5, decay: float = 0.999995
) -> float | jax.Array:
    """fairseq's annealing schedule: `max(start * decay**step, end)`.

    BASE uses (2, 0.5, 0.999995), LARGE (2, 0.1, 0.999995). Works on Python numbers and on traced
    step counters (inside `jax.jit`).
    """
    if isinstance(step, int | float):
        return max(start * decay**step, end)
    # exp(step * log(decay)) with the log taken in float64: decay**step in float32 would round
    # 0.999995 itself and be 1e-3 off after 1e5 steps.
    return jnp.maximum(start * jnp.exp(jnp.asarray(step, jnp.float32) * math.log(decay)), end)


def code_perplexity(probs: jax.Array) -> jax.Array:
    """Sum over groups of exp(entropy) of each group's marginal distribution.

    Args:
      probs: `[G, V]` marginal probabilities (each row sums to 1).

    Returns:
      A scalar in [G, G * V]: G when every group always picks the same codeword, G * V for uniform use.
    """
    entropy = -jnp.sum(jax.scipy.special.xlogy(probs, probs), axis=-1)
    return jnp.sum(jnp.exp(entropy))


class CodebookUsage(NamedTuple):
    """How the codebook was used by a batch.

    Attributes:
      probs: `[G, V]` float32, the per-group codeword distribution averaged over the frames of the
        mask (all frames without one): the softmax probabilities in training, the hard one-hot
        choices in evaluation (as the reference computes its evaluation perplexity).
      perplexity: scalar, `code_perplexity(probs)`.
      indices: `[batch, time, G]` int32, the codeword chosen in each group.
    """

    probs: jax.Array
    perplexity: jax.Array
    indices: jax.Array


def _marginal(probs: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`[batch, time, G, V]` -> `[G, V]`, averaged over the frames where `mask` is True."""
    if mask is None:
        return jnp.mean(probs, axis=(0, 1))
    weights = mask.astype(probs.dtype)[:, :, None, None]
    # An all-False mask gives zeros (perplexity G) rather than 0/0.
    return jnp.sum(probs * weights, axis=(0, 1)) / jnp.maximum(jnp.sum(weights), 1.0)


class GumbelVectorQuantizer(nnx.Module):
    """Gumbel-softmax product quantiser (fairseq's GumbelVectorQuantizer, transformers' naming).

    Parameters: `weight_proj` (Linear `input_dim -> G * V`, the codeword logits) and `codevectors`
    `[G * V, codevector_dim // G]`.

    Example:
      >>> quantizer = GumbelVectorQuantizer(512, num_groups=2, num_vars=320, rngs=nnx.Rngs(0))
      >>> q, usage = quantizer(z, temperature=2.0, key=key, deterministic=False)
    """

    def __init__(
        self,
        input_dim: int,
        num_groups: int = 2,
        num_vars: int = 320,
        codevector_dim: int | None = None,
        *,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        """Builds the codebook.

        Args:
          input_dim: channels of the frames to quantise.
          num_groups: G, codebooks concatenated per frame.
          num_vars: V, codewords per codebook (at least 2).
          codevector_dim: channels of the quantised output; default `input_dim`. Must be divisible
            by `num_groups` (each group contributes `codevector_dim // num_groups` channels).
          dtype: computation dtype; parameters stay float32.
          rngs: parameter initialisation only.
        """
        codevector_dim = input_dim if codevector_dim is None else codevector_dim
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        if num_vars < 2:
            raise ValueError(f"num_vars must be >= 2 (a one-entry codebook carries no information), got {num_vars}")
        if codevector_dim % num_groups != 0:
            raise ValueError(
                f"codevector_dim {codevector_dim} must be divisible by num_groups {num_groups} "
                "(the groups' codewords are concatenated)"
            )
        self.num_groups = num_groups
        self.num_vars = num_vars
        self.codevector_dim = codevector_dim
        self.dim_per_group = codevector_dim // num_groups
        self.dtype = dtype
        # The reference's initialisation: logits ~ N(0, 1) weights and zero bias, codewords ~ U[0, 1).
        self.weight_proj = nnx.Linear(
            input_dim,
            num_groups * num_vars,
            kernel_init=nnx.initializers.normal(1.0),
            bias_init=nnx.initializers.zeros,
            dtype=dtype,
            rngs=rngs,
        )
        self.codevectors = nnx.Param(
            jax.random.uniform(rngs.params(), (num_groups * num_vars, self.dim_per_group), jnp.float32)
        )

    def __call__(
        self,
        x: jax.Array,
        *,
        temperature: float | jax.Array = 2.0,
        key: jax.Array | None = None,
        deterministic: bool = True,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, CodebookUsage]:
        """Quantises frames.

        Args:
          x: `[batch, time, input_dim]`.
          temperature: Gumbel-softmax temperature (training only).
          key: PRNG key of the Gumbel noise; required when `deterministic` is False.
          deterministic: False for training (hard Gumbel sample, straight-through gradient), True for
            evaluation (argmax of the logits).
          mask: optional `[batch, time]` bool, the frames the codebook statistics are computed over
            (the masked, unpadded frames in pretraining).

        Returns:
          `(quantized [batch, time, codevector_dim], CodebookUsage)`.
        """
        if x.ndim != 3:
            raise ValueError(f"x must be [batch, time, input_dim], got shape {tuple(x.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match x's [batch, time] {tuple(x.shape[:2])}")
        if not deterministic and key is None:
            raise ValueError("training mode (deterministic=False) needs a key for the Gumbel noise")
        batch, time, _ = x.shape
        logits = self.weight_proj(x).astype(jnp.float32).reshape(batch, time, self.num_groups, self.num_vars)

        if deterministic:
            indices = jnp.argmax(logits, axis=-1)
            codeword_probs = jax.nn.one_hot(indices, self.num_vars, dtype=jnp.float32)
            usage_probs = codeword_probs
        else:
            assert key is not None  # checked above
            soft = jax.nn.softmax((logits + gumbel_noise(key, logits.shape)) / temperature, axis=-1)
            indices = jnp.argmax(soft, axis=-1)
            hard = jax.nn.one_hot(indices, self.num_vars, dtype=jnp.float32)
            # Straight-through: forward the hard one-hot, backpropagate through the soft sample.
            # The parentheses matter: soft - soft is exactly 0, (hard + soft) - soft is not, and
            # frames with the same codewords must get bitwise-equal targets.
            codeword_probs = hard + (soft - jax.lax.stop_gradient(soft))
            usage_probs = jax.nn.softmax(logits, axis=-1)

        marginal = _marginal(usage_probs, mask)
        codevectors = self.codevectors[...].reshape(self.num_groups, self.num_vars, self.dim_per_group)
        compute_dtype = self.dtype or jnp.float32
        quantized = jnp.einsum(
            "btgv,gvd->btgd", codeword_probs.astype(compute_dtype), codevectors.astype(compute_dtype)
        ).reshape(batch, time, self.codevector_dim)
        usage = CodebookUsage(probs=marginal, perplexity=code_perplexity(marginal), indices=indices.astype(jnp.int32))
        return quantized, usage
