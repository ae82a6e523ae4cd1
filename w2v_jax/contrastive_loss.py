"""The contrastive task and the codebook diversity penalty.

wav2vec 2.0 (section 3.2) asks the context vector c_t of a masked frame to pick its quantised
target q_t among K distractors drawn from other masked frames of the same utterance:

    L_m = -log exp(sim(c_t, q_t) / kappa) / sum_{q~ in {q_t} + Q_t} exp(sim(c_t, q~) / kappa)

with cosine similarity and kappa = 0.1, and adds a diversity penalty L_d that pushes the average
codeword distribution of each codebook towards uniform use.

The NumPy functions (`*_from_scratch`) follow the seed notebook (one time step) and serve as the
test oracles of the vectorised JAX functions.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from w2v_jax.quantization import code_perplexity

# torch.nn.functional.cosine_similarity's eps: the product of the norms is clamped to it.
COSINE_EPS = 1e-8


def cosine_similarity_from_scratch(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b) = a.b / max(|a| |b|, 1e-8) for two `[dim]` vectors."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), COSINE_EPS))


def contrastive_loss_from_scratch(
    context: np.ndarray, target: np.ndarray, negatives: np.ndarray, temperature: float = 0.1
) -> float:
    """-log softmax of the positive among [target, negatives] for one time step.

    Args:
      context: `[dim]` c_t.
      target: `[dim]` q_t.
      negatives: `[K, dim]` distractors; one identical to the target is left out (its logit is -inf).
      temperature: kappa.

    Returns:
      The loss L_m of this time step.
    """
    logits = [cosine_similarity_from_scratch(context, target) / temperature]
    for negative in np.asarray(negatives):
        same = np.array_equal(negative, target)
        logits.append(-np.inf if same else cosine_similarity_from_scratch(context, negative) / temperature)
    scores = np.array(logits)
    top = scores.max()
    return float(-(scores[0] - top - np.log(np.sum(np.exp(scores - top)))))


def sample_negative_indices_from_scratch(mask: np.ndarray, num_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """NumPy oracle of `sample_negative_indices`, one utterance and one frame at a time.

    Args:
      mask: `[batch, time]` bool, the frames that are positives and may be negatives.
      num_negatives: K.
      rng: NumPy generator.

    Returns:
      `[batch, time, K]` frame indices; rows of frames outside the mask hold the frame's own index.
    """
    mask = np.asarray(mask, bool)
    batch, time = mask.shape
    out = np.broadcast_to(np.arange(time)[None, :, None], (batch, time, num_negatives)).copy()
    for b in range(batch):
        candidates = np.flatnonzero(mask[b])
        if len(candidates) < 2:
            continue
        for rank, frame in enumerate(candidates):
            draws = rng.integers(0, len(candidates) - 1, size=num_negatives)
            draws[draws >= rank] += 1  # skip the positive itself, keeping the draw uniform
            out[b, frame] = candidates[draws]
    return out


def diversity_loss_from_scratch(probs: np.ndarray, num_groups: int, num_vars: int) -> float:
    """NumPy oracle of `diversity_loss`: (GV - sum_g exp(H(p_g))) / GV with p averaged over frames."""
    probs = np.asarray(probs, np.float64).reshape(-1, num_groups, num_vars).mean(axis=0)
    perplexity = 0.0
    for g in range(num_groups):
        p = probs[g][probs[g] > 0]
        perplexity += np.exp(-np.sum(p * np.log(p)))
    return float((num_groups * num_vars - perplexity) / (num_groups * num_vars))


def _check_mask(mask: jax.Array, shape: tuple[int, ...], name: str) -> None:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must be [batch, time] = {tuple(shape)}, got shape {tuple(mask.shape)}")


def _min_candidates(mask: jax.Array | np.ndarray) -> int | None:
    """Smallest number of candidate frames in a row that has any, when the mask is concrete."""
    if isinstance(mask, jax.core.Tracer):
        return None
    counts = np.asarray(mask, bool).sum(axis=1)
    counts = counts[counts > 0]
    return int(counts.min()) if counts.size else None


def sample_negative_indices(key: jax.Array, mask: jax.Array, num_negatives: int) -> jax.Array:
    """Draws distractor frame indices for every positive, inside jit with static shapes.

    For a frame with `mask` True, `num_negatives` indices are drawn uniformly with replacement
    among the OTHER frames of its utterance where `mask` is True: a draw in [0, n - 1) over the
    utterance's n candidates, shifted by one at and after the frame's own rank, as fairseq and
    transformers do. Frames with `mask` False (and rows with fewer than two candidates) get their
    own index: such rows carry no contrastive term.

    Args:
      key: PRNG key.
      mask: `[batch, time]` bool, the positives and candidate negatives (masked, unpadded frames
        in pretraining).
      num_negatives: K.

    Returns:
      `[batch, time, K]` int32 frame indices into the same utterance.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    mask = jnp.asarray(mask, bool)
    batch, time = mask.shape
    counts = jnp.sum(mask, axis=1)  # [batch]
    # The candidates of each row first, in time order: order[b, r] is the r-th candidate frame.
    order = jnp.argsort(~mask, axis=1, stable=True)
    rank = jnp.cumsum(mask, axis=1) - 1  # [batch, time], the frame's position among its row's candidates
    draws = jax.random.randint(
        key, (batch, time, num_negatives), 0, jnp.maximum(counts - 1, 1)[:, None, None], dtype=jnp.int32
    )
    draws = jnp.where(draws >= rank[:, :, None], draws + 1, draws)
    negatives = jnp.take_along_axis(order, draws.reshape(batch, -1), axis=1).reshape(batch, time, num_negatives)
    own = jnp.broadcast_to(jnp.arange(time, dtype=jnp.int32)[None, :, None], negatives.shape)
    usable = mask & (counts >= 2)[:, None]
    return jnp.where(usable[:, :, None], negatives.astype(jnp.int32), own)


def gather_negatives(quantized: jax.Array, indices: jax.Array) -> jax.Array:
    """Looks up distractors: `[batch, time, dim]` x `[batch, time, K]` -> `[batch, time, K, dim]`."""
    batch, time, dim = quantized.shape
    flat = indices.reshape(batch, -1)
    gathered = jnp.take_along_axis(quantized, flat[:, :, None], axis=1)
    return gathered.reshape(batch, time, indices.shape[-1], dim)


def sample_negatives(
    key: jax.Array,
    quantized: jax.Array,
    num_negatives: int,
    mask: jax.Array | None = None,
    padding_mask: jax.Array | None = None,
) -> jax.Array:
    """Samples K distractors per frame from other frames of the same utterance.

    Args:
      key: PRNG key.
      quantized: `[batch, time, dim]` targets.
      num_negatives: K; at most the number of other candidate frames in an utterance.
      mask: optional `[batch, time]` bool: when given, positives and distractors are the masked
        frames only (as in fairseq and transformers); without it, every frame.
      padding_mask: optional `[batch, time]` bool, True on real frames: padding is never a distractor.

    Returns:
      `[batch, time, K, dim]` distractors.
    """
    if quantized.ndim != 3:
        raise ValueError(f"quantized must be [batch, time, dim], got shape {tuple(quantized.shape)}")
    batch, time, _ = quantized.shape
    candidates = jnp.ones((batch, time), bool)
    for name, extra in (("mask", mask), ("padding_mask", padding_mask)):
        if extra is not None:
            _check_mask(extra, (batch, time), name)
            candidates = candidates & jnp.asarray(extra, bool)
    available = time if mask is None and padding_mask is None else _min_candidates(candidates)
    if available is not None and num_negatives > available - 1:
        raise ValueError(
            f"num_negatives={num_negatives} is larger than the {available - 1} other frames available in an utterance"
        )
    indices = sample_negative_indices(key, candidates, num_negatives)
    return gather_negatives(quantized, indices)


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity over the last axis, broadcasting, float32: a.b / max(|a| |b|, 1e-8)."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
    return dot / jnp.sqrt(jnp.maximum(norms, COSINE_EPS**2))


def same_codewords(codeword_indices: jax.Array, negative_indices: jax.Array) -> jax.Array:
    """Which distractors chose exactly the codewords of their positive.

    Deciding this from the integer codeword choices rather than from float equality of the
    projected targets makes it independent of how XLA tiles the projection matmul, and so of the
    batch layout and the number of devices.

    Args:
      codeword_indices: `[batch, time, G]` int, the codeword chosen in each group (`CodebookUsage.indices`).
      negative_indices: `[batch, time, K]` frame indices of the distractors.

    Returns:
      `[batch, time, K]` bool.
    """
    negatives = gather_negatives(codeword_indices, negative_indices)  # [B, T, K, G]
    return jnp.all(negatives == codeword_indices[:, :, None, :], axis=-1)


def contrastive_logits(
    context: jax.Array,
    quantized: jax.Array,
    negatives: jax.Array,
    temperature: float = 0.1,
    same_as_positive: jax.Array | None = None,
) -> jax.Array:
    """Cosine logits of each context vector against its target (index 0) and distractors.

    Args:
      context: `[batch, time, dim]` c_t (projected context network outputs).
      quantized: `[batch, time, dim]` q_t.
      negatives: `[batch, time, K, dim]`.
      temperature: kappa.
      same_as_positive: optional `[batch, time, K]` bool, the distractors that equal their target
        (see `same_codewords`); by default, exact equality of the vectors.

    Returns:
      `[batch, time, 1 + K]` float32 logits; a distractor identical to its target gets -inf, so
      sampling a frame whose codewords equal the target's does not ask the model the impossible.
    """
    if context.shape != quantized.shape:
        raise ValueError(f"context {tuple(context.shape)} and quantized {tuple(quantized.shape)} must match")
    if negatives.ndim != 4 or negatives.shape[:2] != quantized.shape[:2] or negatives.shape[3] != quantized.shape[2]:
        raise ValueError(
            f"negatives must be [batch, time, K, dim] matching {tuple(quantized.shape)}, got {tuple(negatives.shape)}"
        )
    targets = jnp.concatenate([quantized[:, :, None, :], negatives], axis=2)  # [B, T, 1 + K, D]
    logits = cosine_similarity(context[:, :, None, :], targets) / temperature
    if same_as_positive is None:
        same_as_positive = jnp.all(negatives == quantized[:, :, None, :], axis=-1)
    elif tuple(same_as_positive.shape) != tuple(negatives.shape[:3]):
        raise ValueError(
            f"same_as_positive must be [batch, time, K] = {tuple(negatives.shape[:3])}, "
            f"got {tuple(same_as_positive.shape)}"
        )
    return logits.at[:, :, 1:].set(jnp.where(same_as_positive, -jnp.inf, logits[:, :, 1:]))


def _reduce(values: jax.Array, mask: jax.Array | None, reduction: Literal["mean", "sum"]) -> jax.Array:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    weights = jnp.ones_like(values) if mask is None else mask.astype(values.dtype)
    total = jnp.sum(values * weights)
    return total if reduction == "sum" else total / jnp.maximum(jnp.sum(weights), 1.0)


def contrastive_loss(
    context: jax.Array,
    quantized: jax.Array,
    negatives: jax.Array,
    temperature: float = 0.1,
    mask: jax.Array | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> jax.Array:
    """Cross-entropy of the target (class 0) among target and distractors.

    Args:
      context, quantized: `[batch, time, dim]`.
      negatives: `[batch, time, K, dim]`.
      temperature: kappa (0.1 in the paper).
      mask: optional `[batch, time]` bool, the frames that count (the masked frames in
        pretraining); without it, every frame counts (the seed notebook's behaviour).
      reduction: "mean" over the counted frames, or "sum" (the reference's pretraining loss).

    Returns:
      A float32 scalar.
    """
    if mask is not None:
        _check_mask(mask, tuple(context.shape[:2]), "mask")
    return contrastive_loss_from_logits(contrastive_logits(context, quantized, negatives, temperature), mask, reduction)


def contrastive_loss_from_logits(
    logits: jax.Array, mask: jax.Array | None = None, reduction: Literal["mean", "sum"] = "mean"
) -> jax.Array:
    """Cross-entropy of class 0 from `[batch, time, 1 + K]` logits (see `contrastive_loss`)."""
    per_frame = -jax.nn.log_softmax(logits, axis=-1)[..., 0]
    return _reduce(per_frame, mask, reduction)


def contrastive_accuracy(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of counted frames whose target has the highest logit, as fairseq counts it.

    A frame whose logits are all equal (the target is both the largest and the smallest) is not
    counted as correct.

    Args:
      logits: `[batch, time, 1 + K]` from `contrastive_logits`.
      mask: optional `[batch, time]` bool of the frames that count.

    Returns:
      A float32 scalar in [0, 1].
    """
    return _reduce(_correct(logits).astype(jnp.float32), mask, "mean")


def contrastive_num_correct(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Number of counted frames whose target has the highest logit (`contrastive_accuracy`'s numerator).

    Counts add up over batches, micro-batches and devices; divide the sum by the summed number of
    counted frames once.

    Args:
      logits: `[batch, time, 1 + K]` from `contrastive_logits`.
      mask: optional `[batch, time]` bool of the frames that count.

    Returns:
      An int32 scalar.
    """
    correct = _correct(logits)
    if mask is not None:
        _check_mask(mask, logits.shape[:2], "mask")
        correct = correct & jnp.asarray(mask, bool)
    return jnp.sum(correct, dtype=jnp.int32)


def contrastive_chance_correct(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Expected number of counted frames a uniform guess among each frame's candidates gets right.

    A frame's candidates are its target and the distractors that count: those whose logit isn't
    -inf (`contrastive_logits` gives -inf to a distractor with its target's codewords). A guess is
    right with probability 1 / (1 + distractors that count), 1 when none counts (the target then
    wins, as `contrastive_num_correct` counts it). Divided by the number of counted frames, the
    sum is the accuracy at chance: 1 / (1 + K) only when no distractor shares its target's
    codewords, more with a small codebook. Counts add up as `contrastive_num_correct`'s do.

    Args:
      logits: `[batch, time, 1 + K]` from `contrastive_logits`.
      mask: optional `[batch, time]` bool of the frames that count.

    Returns:
      A float32 scalar.
    """
    if mask is not None:
        _check_mask(mask, logits.shape[:2], "mask")
    candidates = 1 + jnp.sum(logits[..., 1:] != -jnp.inf, axis=-1)
    return _reduce(1.0 / candidates.astype(jnp.float32), mask, "sum")


def _correct(logits: jax.Array) -> jax.Array:
    """`[batch, time]` bool: the target's logit is the largest and not all logits are equal."""
    return (jnp.argmax(logits, axis=-1) == 0) & ~(jnp.argmin(logits, axis=-1) == 0)


def diversity_loss(probs: jax.Array, num_groups: int, num_vars: int) -> jax.Array:
    """Codebook diversity penalty (GV - perplexity) / GV.

    Args:
      probs: `[..., G, V]` codeword probabilities; leading axes (frames) are averaged first.
      num_groups: G.
      num_vars: V.

    Returns:
      A scalar in [0, 1): ~0 when every codeword is used equally, (GV - G) / GV when each group
      always picks the same codeword.
    """
    if tuple(probs.shape[-2:]) != (num_groups, num_vars):
        raise ValueError(f"probs must end in [G, V] = [{num_groups}, {num_vars}], got shape {tuple(probs.shape)}")
    marginal = jnp.mean(probs.reshape(-1, num_groups, num_vars), axis=0)
    total = num_groups * num_vars
    return (total - code_perplexity(marginal)) / total
