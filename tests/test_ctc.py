"""CTC loss against a NumPy forward-algorithm oracle and transformers' loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.loss.loss_ctc import ForCTCLoss

from w2v_jax.ctc import ctc_loss, ctc_loss_from_scratch, min_ctc_frames
from w2v_jax.data.labels import LABEL_PADDING

# float32 losses of O(10-100) against float64 or torch's float32: measured up to 1.6e-7 relative.
RTOL = 5e-7
# Logit gradients (p - posterior, O(1)) lose ~|loss| * eps in the log-space recursion. Against float64
# ours err up to 4.1e-6 (torch's float32 up to 9.1e-6), so against transformers up to 9.1e-6 apart.
GRAD_ATOL_FLOAT64, GRAD_ATOL_TRANSFORMERS = 1.2e-5, 2.5e-5


def _batch(seed=0, batch=5, time=14, vocab=7, max_labels=6, blank=0):
    """Random logits, frame lengths and -100-padded labels with repeats, every alignment possible."""
    rng = np.random.default_rng(seed)
    logits = (2 * rng.standard_normal((batch, time, vocab))).astype(np.float32)
    lengths = rng.integers(time // 2 + 2, time + 1, batch)
    lengths[0] = time
    labels = np.full((batch, max_labels), LABEL_PADDING, np.int64)
    for b in range(batch):
        n = rng.integers(0 if b == batch - 1 else 1, max_labels + 1)
        target = rng.choice([v for v in range(vocab) if v != blank], n)
        if n >= 2:
            target[1] = target[0]  # a repeat needs a blank between: the skip-transition rule
        labels[b, :n] = target
    return logits, lengths, labels


def _targets(labels, blank=0):
    return [[int(v) for v in row if v != LABEL_PADDING and v != blank] for row in labels]


def _torch_loss(logits, lengths, labels, blank=0, reduction="sum", zero_infinity=False):
    """Loss and logits gradient as transformers' Wav2Vec2ForCTC computes them."""
    logits_t = torch.tensor(logits, requires_grad=True)
    loss = ForCTCLoss(
        logits_t,
        torch.tensor(labels),
        torch.tensor(lengths),
        blank_token_id=blank,
        reduction=reduction,
        zero_infinity=zero_infinity,
    )
    loss.backward()
    return loss.detach().numpy(), logits_t.grad.numpy()


def _float64_loss(logits, lengths, labels, blank=0, reduction="sum"):
    """The same loss in float64 (torch's CTC without transformers' float32 cast): the ground truth."""
    logits_t = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    labels_t = torch.tensor(labels)
    keep = (labels_t != LABEL_PADDING) & (labels_t != blank)
    loss = torch.nn.functional.ctc_loss(
        torch.log_softmax(logits_t, -1).transpose(0, 1),
        labels_t[keep],
        torch.tensor(lengths),
        keep.sum(-1),
        blank=blank,
        reduction=reduction,
    )
    loss.backward()
    return loss.detach().numpy(), logits_t.grad.numpy()


# One compiled function per option set: every test batch has the same shapes, so they share it.
_loss_and_grad = jax.jit(jax.value_and_grad(ctc_loss), static_argnames=("blank_id", "reduction", "zero_infinity"))
_losses = jax.jit(functools.partial(ctc_loss, reduction="none"), static_argnames="blank_id")


def _jax_loss(logits, lengths, labels, **kwargs):
    loss, grad = _loss_and_grad(jnp.asarray(logits), jnp.asarray(lengths), jnp.asarray(labels), **kwargs)
    return np.asarray(loss), np.asarray(grad)


@pytest.mark.parametrize("blank", [0, 3])
def test_loss_matches_forward_algorithm_oracle(blank):
    logits, lengths, labels = _batch(seed=blank, blank=blank)
    losses = _losses(logits, lengths, labels, blank_id=blank)
    log_probs = jax.nn.log_softmax(logits.astype(np.float64))
    expected = [
        ctc_loss_from_scratch(log_probs[b, : lengths[b]], target, blank)
        for b, target in enumerate(_targets(labels, blank))
    ]
    np.testing.assert_allclose(losses, expected, rtol=RTOL)


def test_oracle_sums_all_alignments_by_enumeration():
    """The oracle itself: p(target) = sum over every frame path that collapses to it."""
    rng = np.random.default_rng(1)
    log_probs = np.log(rng.dirichlet(np.ones(3), size=5))
    target = [1, 1, 2]
    total = 0.0
    for path in np.ndindex(*(3,) * 5):
        collapsed = [v for i, v in enumerate(path) if v != 0 and (i == 0 or path[i - 1] != v)]
        if collapsed == target:
            total += np.exp(sum(log_probs[t, v] for t, v in enumerate(path)))
    np.testing.assert_allclose(ctc_loss_from_scratch(log_probs, target), -np.log(total), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("blank", [0, 2])
def test_loss_and_gradient_match_transformers(reduction, blank):
    logits, lengths, labels = _batch(seed=10 + blank, blank=blank)
    loss, grad = _jax_loss(logits, lengths, labels, blank_id=blank, reduction=reduction)
    expected_loss, expected_grad = _torch_loss(logits, lengths, labels, blank, reduction)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(grad, expected_grad, atol=GRAD_ATOL_TRANSFORMERS)
    exact_loss, exact_grad = _float64_loss(logits, lengths, labels, blank, reduction)
    np.testing.assert_allclose(loss, exact_loss, rtol=RTOL)
    np.testing.assert_allclose(grad, exact_grad, atol=GRAD_ATOL_FLOAT64)
    assert np.all(grad[np.arange(logits.shape[1])[None, :] >= lengths[:, None]] == 0)  # padded frames


def test_labels_selected_like_masked_select():
    """-100 and blanks anywhere in a row are dropped and the rest kept in order, as transformers does."""
    logits, lengths, labels = _batch(seed=3)
    labels[:2] = [[LABEL_PADDING, 2, 0, 2, LABEL_PADDING, 5], [3, 0, LABEL_PADDING, 4, 4, LABEL_PADDING]]
    expected_loss, expected_grad = _torch_loss(logits, lengths, labels, reduction="mean")
    loss, grad = _jax_loss(logits, lengths, labels, reduction="mean")
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(grad, expected_grad, atol=GRAD_ATOL_TRANSFORMERS)


def test_min_ctc_frames_is_the_shortest_possible_alignment():
    """Against the oracle: the fewest frames whose forward algorithm gives a finite loss."""
    rng = np.random.default_rng(9)
    targets = [rng.integers(1, 3, rng.integers(0, 7)).tolist() for _ in range(20)]  # ids 1, 2: many repeats
    padded = np.full((len(targets), 6), -1)
    for row, target in zip(padded, targets):
        row[: len(target)] = target
    needed = np.asarray(min_ctc_frames(jnp.asarray(padded), jnp.asarray([len(t) for t in targets])))
    uniform = np.log(np.full((12, 3), 1 / 3))
    for target, frames in zip(targets, needed):
        shortest = next(t for t in range(13) if np.isfinite(ctc_loss_from_scratch(uniform[:t], target)))
        assert frames == shortest, target


def test_impossible_alignment_is_inf_or_zeroed_like_transformers():
    logits, lengths, labels = _batch(seed=4)
    lengths[1:3] = [6, 5]
    labels[1] = [1, 2, 3, 4, 5, 6]  # 6 labels in 6 frames: possible
    labels[2] = [1, 1, 2, 2, LABEL_PADDING, LABEL_PADDING]  # 4 labels + 2 repeats = 6 frames > 5: impossible
    np.testing.assert_array_equal(min_ctc_frames(jnp.asarray(labels[1:3]), jnp.array([6, 4])), [6, 6])
    losses = _losses(logits, lengths, labels)
    assert np.isinf(losses[2]) and np.all(np.isfinite(np.delete(losses, 2)))
    assert np.isinf(ctc_loss_from_scratch(jax.nn.log_softmax(logits[2, :5]), [1, 1, 2, 2]))
    np.testing.assert_allclose(
        losses[1], ctc_loss_from_scratch(jax.nn.log_softmax(logits[1, :6]), [1, 2, 3, 4, 5, 6]), rtol=RTOL
    )
    expected_loss, _ = _torch_loss(logits, lengths, labels, reduction="sum")
    loss, grad = _jax_loss(logits, lengths, labels, reduction="sum")
    assert np.isinf(expected_loss) and np.isinf(loss)
    assert np.all(grad[2] == 0) and np.all(np.isfinite(grad))  # torch's gradient is NaN for row 2
    for reduction in ("sum", "mean"):
        expected_loss, expected_grad = _torch_loss(logits, lengths, labels, reduction=reduction, zero_infinity=True)
        loss, grad = _jax_loss(logits, lengths, labels, reduction=reduction, zero_infinity=True)
        np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
        np.testing.assert_allclose(grad, expected_grad, atol=GRAD_ATOL_TRANSFORMERS)


def test_empty_target_is_the_all_blank_path():
    logits, lengths, labels = _batch(seed=5)
    labels[1] = LABEL_PADDING
    labels[2] = 0  # blanks are padding too
    expected_loss, expected_grad = _torch_loss(logits, lengths, labels, reduction="mean")
    loss, grad = _jax_loss(logits, lengths, labels, reduction="mean")
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(grad, expected_grad, atol=GRAD_ATOL_TRANSFORMERS)
    log_probs = jax.nn.log_softmax(logits[1, : lengths[1]].astype(np.float64))
    np.testing.assert_allclose(_losses(logits, lengths, labels)[1], -log_probs[:, 0].sum(), rtol=RTOL)


def test_bfloat16_logits_are_scored_in_float32():
    logits, lengths, labels = _batch(seed=6)
    low = jnp.asarray(logits, jnp.bfloat16)
    losses = _losses(low, lengths, labels)
    assert losses.dtype == jnp.float32
    np.testing.assert_array_equal(losses, _losses(low.astype(jnp.float32), lengths, labels))


def test_bad_inputs_are_named():
    logits, lengths, labels = _batch()
    with pytest.raises(ValueError, match="logits must be"):
        ctc_loss(logits[0], lengths, labels)
    with pytest.raises(ValueError, match="labels must be"):
        ctc_loss(logits, lengths, labels[:2])
    with pytest.raises(ValueError, match="logit_lengths must be in"):
        ctc_loss(logits, lengths + logits.shape[1], labels)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 7\)"):
        ctc_loss(logits, lengths, np.where(labels == LABEL_PADDING, 7, labels))
    with pytest.raises(ValueError, match="reduction"):
        ctc_loss(logits, lengths, labels, reduction="batchmean")
