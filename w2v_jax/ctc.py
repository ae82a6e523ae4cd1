"""Connectionist temporal classification (CTC): the fine-tuning loss `Wav2Vec2ForCTC` computes.

`ctc_loss` has the semantics of transformers' `Wav2Vec2ForCTC` loss (`loss/loss_ctc.py`, which calls
`torch.nn.functional.ctc_loss`): log-softmax in float32, blank = `pad_token_id`, labels padded with
-100 (positions equal to -100 or to the blank are dropped, the rest kept in order), the frame count
of each utterance from the conv arithmetic, reduction "sum" or "mean" (each utterance's loss divided
by its target length, clamped to at least 1, then averaged over the batch) and `zero_infinity`.

The forward recursion is optax's (`optax.ctc_loss`), which stands in log(0) by -1e5; an alignment that
is impossible (fewer frames than labels plus adjacent repeats: Graves et al. 2006's forward variables
are all zero then) is
detected here and given an infinite loss, as torch does, or zero with `zero_infinity`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from w2v_jax.data.labels import LABEL_PADDING

Reduction = Literal["sum", "mean", "none"]


def ctc_loss_from_scratch(log_probs: np.ndarray, target: Sequence[int], blank_id: int = 0) -> float:
    """NumPy oracle: -log p(target | log_probs) by the log-space forward algorithm (float64).

    Args:
      log_probs: `[time, vocab]` log-probabilities of one utterance's unpadded frames.
      target: label ids without blanks.
      blank_id: the blank's id.

    Returns:
      The negative log-likelihood; `inf` when no alignment fits in `time` frames.
    """
    log_probs = np.asarray(log_probs, np.float64)
    extended = [blank_id]
    for label in target:
        extended += [int(label), blank_id]
    num_states = len(extended)
    alpha = np.full(num_states, -np.inf)
    if log_probs.shape[0] == 0:
        return 0.0 if not target else float("inf")
    alpha[0] = log_probs[0, blank_id]
    if num_states > 1:
        alpha[1] = log_probs[0, extended[1]]
    for t in range(1, log_probs.shape[0]):
        previous = alpha
        alpha = np.full(num_states, -np.inf)
        for s in range(num_states):
            candidates = [previous[s]]
            if s >= 1:
                candidates.append(previous[s - 1])
            # Skipping the blank between two labels is allowed only when they differ.
            if s >= 2 and extended[s] != blank_id and extended[s] != extended[s - 2]:
                candidates.append(previous[s - 2])
            alpha[s] = np.logaddexp.reduce(candidates) + log_probs[t, extended[s]]
    final = np.logaddexp(alpha[-1], alpha[-2]) if num_states > 1 else alpha[-1]
    return float(-final)


def _compact_labels(labels: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Moves the kept labels of each row to the front, in order (torch's `masked_select` per row).

    Returns `[batch, labels]` ids (-1 after the kept ones) and the kept counts `[batch]`.
    """
    order = jnp.argsort(~keep, axis=1, stable=True)
    compact = jnp.take_along_axis(labels, order, axis=1)
    compact_keep = jnp.take_along_axis(keep, order, axis=1)
    return jnp.where(compact_keep, compact, -1), keep.sum(axis=1)


def min_ctc_frames(targets: jax.Array, target_lengths: jax.Array) -> jax.Array:
    """Fewest frames that can emit each target: its length plus its adjacent repeats (a blank between).

    Args:
      targets: `[batch, labels]` ids, left-aligned, anything after `target_lengths`.
      target_lengths: `[batch]`.

    Returns:
      `[batch]` int32.
    """
    positions = jnp.arange(1, targets.shape[1])
    repeats = (targets[:, 1:] == targets[:, :-1]) & (positions[None, :] < target_lengths[:, None])
    return (target_lengths + repeats.sum(axis=1)).astype(jnp.int32)


def _check_shapes(logits, logit_lengths, labels) -> None:
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, time, vocab], got shape {tuple(logits.shape)}")
    if labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be [batch={logits.shape[0]}, labels], got shape {tuple(labels.shape)}")
    if logit_lengths.shape != (logits.shape[0],):
        raise ValueError(f"logit_lengths must be [batch={logits.shape[0]}], got shape {tuple(logit_lengths.shape)}")
    if not isinstance(logit_lengths, jax.core.Tracer):
        lengths = np.asarray(logit_lengths)
        if lengths.min(initial=0) < 0 or lengths.max(initial=0) > logits.shape[1]:
            raise ValueError(f"logit_lengths must be in [0, {logits.shape[1]}], got {lengths.tolist()}")
    if not isinstance(labels, jax.core.Tracer):
        values = np.asarray(labels)
        bad = (values != LABEL_PADDING) & ((values < 0) | (values >= logits.shape[2]))
        if bad.any():
            raise ValueError(
                f"labels must be in [0, {logits.shape[2]}) or {LABEL_PADDING} (padding), got {values[bad][:5].tolist()}"
            )


def ctc_utterance_losses(
    logits: jax.Array,
    logit_lengths: jax.Array,
    labels: jax.Array,
    *,
    blank_id: int = 0,
    zero_infinity: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Each utterance's CTC loss (the negative log-likelihood of its labels) and its target length.

    Args:
      logits: `[batch, time, vocab]` (any float dtype; the log-softmax is taken in float32).
      logit_lengths: `[batch]` unpadded frames (the feature encoder's `compute_output_length` of the
        unpadded sample counts).
      labels: `[batch, labels]` ids; positions equal to -100 or to `blank_id` are padding.
      blank_id: the CTC blank, transformers' `pad_token_id`.
      zero_infinity: impossible alignments get loss 0 (and no gradient) instead of `inf`.

    Returns:
      `(losses [batch] float32, target_lengths [batch] int)`. An impossible utterance contributes no
      gradient either way (torch's gradient is NaN there without `zero_infinity`).
    """
    _check_shapes(logits, logit_lengths, labels)
    targets, target_lengths = _compact_labels(labels, (labels != LABEL_PADDING) & (labels != blank_id))
    frames = jnp.arange(logits.shape[1])
    logit_paddings = (frames[None, :] >= logit_lengths[:, None]).astype(jnp.float32)
    label_paddings = (targets < 0).astype(jnp.float32)
    # optax takes the log-softmax itself; float32 input makes it float32 as transformers' is.
    losses = optax.ctc_loss(logits.astype(jnp.float32), logit_paddings, targets, label_paddings, blank_id=blank_id)
    feasible = logit_lengths >= min_ctc_frames(targets, target_lengths)
    return jnp.where(feasible, losses, 0.0 if zero_infinity else jnp.inf), target_lengths


def reduce_ctc_losses(losses: jax.Array, target_lengths: jax.Array, reduction: Reduction) -> jax.Array:
    """`ctc_utterance_losses`' `[batch]` losses reduced as transformers does: "sum" over the batch,
    "mean" (each loss divided by its target length, at least 1, then averaged), or "none"."""
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return (losses / jnp.maximum(target_lengths, 1)).mean()


def ctc_loss(
    logits: jax.Array,
    logit_lengths: jax.Array,
    labels: jax.Array,
    *,
    blank_id: int = 0,
    reduction: Reduction = "sum",
    zero_infinity: bool = False,
) -> jax.Array:
    """CTC loss as transformers' `Wav2Vec2ForCTC` computes it: `ctc_utterance_losses` reduced by
    `reduce_ctc_losses`.

    Args:
      logits, logit_lengths, labels, blank_id, zero_infinity: as `ctc_utterance_losses`'.
      reduction: "sum" over the batch, "mean" (each loss divided by its target length, at least 1,
        then averaged), or "none" (`[batch]`).

    Returns:
      A float32 scalar, or `[batch]` for reduction "none".
    """
    losses, target_lengths = ctc_utterance_losses(
        logits, logit_lengths, labels, blank_id=blank_id, zero_infinity=zero_infinity
    )
    return reduce_ctc_losses(losses, target_lengths, reduction)
