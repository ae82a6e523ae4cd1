"""Contrastive loss, negative sampling and diversity loss against their NumPy oracles."""

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2v_jax.contrastive_loss import (
    contrastive_accuracy,
    contrastive_chance_correct,
    contrastive_logits,
    contrastive_loss,
    contrastive_loss_from_scratch,
    contrastive_num_correct,
    cosine_similarity,
    cosine_similarity_from_scratch,
    diversity_loss,
    diversity_loss_from_scratch,
    gather_negatives,
    same_codewords,
    sample_negative_indices,
    sample_negative_indices_from_scratch,
    sample_negatives,
)

# float32 against float64 oracles: 1e-5 relative; losses are O(1) so 1e-5 absolute too.
RTOL, ATOL = 1e-5, 1e-5


def _inputs(batch=2, time=9, dim=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    context = rng.standard_normal((batch, time, dim)).astype(np.float32)
    quantized = rng.standard_normal((batch, time, dim)).astype(np.float32)
    indices = rng.integers(0, time, (batch, time, k))
    negatives = np.stack([quantized[b][indices[b]] for b in range(batch)])
    return context, quantized, negatives, indices


def test_cosine_similarity_matches_oracle():
    a, b, _, _ = _inputs()
    ours = jax.jit(cosine_similarity)(a, b)
    ref = [[cosine_similarity_from_scratch(a[i, t], b[i, t]) for t in range(a.shape[1])] for i in range(a.shape[0])]
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)
    assert float(cosine_similarity(jnp.zeros(3), jnp.ones(3))) == 0.0  # no 0/0


def test_contrastive_loss_matches_per_step_oracle():
    context, quantized, negatives, indices = _inputs()
    # Make some distractors equal to their positive: their logits must be -inf, as in the oracle.
    negatives[0, 3, 1] = quantized[0, 3]
    negatives[1, 0, :] = quantized[1, 0]
    per_step = np.array(
        [
            [contrastive_loss_from_scratch(context[b, t], quantized[b, t], negatives[b, t]) for t in range(9)]
            for b in range(2)
        ]
    )
    mask = np.random.default_rng(1).random((2, 9)) < 0.5
    f = jax.jit(contrastive_loss, static_argnames="reduction")
    np.testing.assert_allclose(f(context, quantized, negatives), per_step.mean(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(f(context, quantized, negatives, mask=mask), per_step[mask].mean(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        f(context, quantized, negatives, mask=mask, reduction="sum"), per_step[mask].sum(), rtol=RTOL, atol=ATOL
    )
    logits = contrastive_logits(context, quantized, negatives)
    chex.assert_shape(logits, (2, 9, 5))
    assert np.isneginf(logits[0, 3, 2]) and np.all(np.isneginf(logits[1, 0, 1:]))
    assert float(per_step[1, 0]) == 0.0  # only the target left: nothing to contrast


def test_loss_is_low_for_the_right_target_and_high_for_a_wrong_one():
    context, quantized, negatives, _ = _inputs(dim=32)
    good = contrastive_loss(context, context, negatives)
    bad = contrastive_loss(context, -context, negatives)
    assert float(good) < float(bad)


def test_accuracy_counts_target_wins_but_not_ties():
    logits = jnp.array([[[2.0, 1.0, 0.0], [0.0, 1.0, 0.5], [1.0, 1.0, 1.0]]])
    np.testing.assert_allclose(contrastive_accuracy(logits), 1 / 3)
    np.testing.assert_allclose(contrastive_accuracy(logits, mask=jnp.array([[True, True, False]])), 1 / 2)


def test_num_correct_counts_masked_target_wins_as_an_oracle_loop():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 7, 5)).astype(np.float32)
    logits[0, 2] = 1.0  # all equal: not a win
    mask = rng.random((3, 7)) < 0.6
    expected = sum(int(mask[b, t] and logits[b, t, 0] > logits[b, t, 1:].max()) for b in range(3) for t in range(7))
    count = jax.jit(contrastive_num_correct)(logits, mask)
    assert count.dtype == jnp.int32 and int(count) == expected
    assert int(contrastive_num_correct(logits)) == int((logits[..., 0] > logits[..., 1:].max(-1)).sum())
    np.testing.assert_allclose(contrastive_accuracy(logits, mask), expected / mask.sum(), rtol=1e-6)
    with pytest.raises(ValueError, match="mask must be"):
        contrastive_num_correct(logits, mask[:, :3])


def test_chance_counts_the_distractors_that_count_with_a_tiny_codebook():
    # G=1, V=2: about half of all distractors share their target's codeword, so chance is far
    # above 1 / (1 + K); checked exactly against a loop over frames and distractors.
    rng = np.random.default_rng(4)
    batch, time, k, dim = 3, 12, 6, 5
    codes = rng.integers(0, 2, (batch, time, 1))
    codebook = rng.standard_normal((2, dim)).astype(np.float32)
    quantized = codebook[codes[..., 0]]
    context = rng.standard_normal((batch, time, dim)).astype(np.float32)
    mask = rng.random((batch, time)) < 0.7
    indices = np.asarray(sample_negative_indices(jax.random.key(0), jnp.asarray(mask), k))
    negatives = np.stack([quantized[b][indices[b]] for b in range(batch)])
    same = same_codewords(jnp.asarray(codes), jnp.asarray(indices))
    logits = contrastive_logits(context, quantized, negatives, same_as_positive=same)
    per_frame = np.zeros((batch, time))
    for b in range(batch):
        for t in range(time):
            counted = sum(codes[b, indices[b, t, j], 0] != codes[b, t, 0] for j in range(k))
            per_frame[b, t] = 1.0 / (1 + counted)
    chance = jax.jit(contrastive_chance_correct)(logits, mask)
    assert chance.dtype == jnp.float32
    np.testing.assert_allclose(chance, per_frame[mask].sum(), rtol=1e-6)
    np.testing.assert_allclose(contrastive_chance_correct(logits), per_frame.sum(), rtol=1e-6)
    masked = per_frame[mask]
    # The case is the one that matters: collisions everywhere, some frames with none counted.
    assert masked.mean() > 2 / (1 + k) and np.any(masked == 1.0) and np.any(masked < 1 / 2)
    with pytest.raises(ValueError, match="mask must be"):
        contrastive_chance_correct(logits, mask[:, :3])


def test_gather_negatives():
    _, quantized, negatives, indices = _inputs()
    np.testing.assert_array_equal(jax.jit(gather_negatives)(quantized, indices), negatives)


def _check_negative_indices(indices, mask):
    batch, time, k = indices.shape
    for b in range(batch):
        candidates = set(np.flatnonzero(mask[b]).tolist())
        for t in range(time):
            if mask[b, t] and len(candidates) >= 2:
                assert set(indices[b, t].tolist()) <= candidates - {t}
            else:
                assert np.all(indices[b, t] == t)


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(mask=hnp.arrays(bool, st.tuples(st.integers(1, 3), st.integers(2, 12))), seed=st.integers(0, 2**16))
def test_negatives_never_the_positive_and_stay_in_their_utterance(mask, seed):
    indices = np.asarray(_SAMPLE(jax.random.key(seed), mask))
    assert indices.dtype == np.int32 and indices.shape == mask.shape + (3,)
    _check_negative_indices(indices, mask)


_SAMPLE = jax.jit(lambda key, mask: sample_negative_indices(key, mask, 3))


def test_negative_distribution_matches_the_oracle():
    # Both samplers draw uniformly among the other candidates: compare the frequencies of each
    # (frame, negative) pair over many draws with the NumPy oracle's.
    mask = np.array([[True, False, True, True, False, True, True], [False] * 3 + [True] * 4])
    draws = 4000
    ours = np.asarray(
        jax.vmap(lambda k: sample_negative_indices(k, mask, 5))(jax.random.split(jax.random.key(0), draws))
    )
    rng = np.random.default_rng(0)
    oracle = np.stack([sample_negative_indices_from_scratch(mask, 5, rng) for _ in range(draws)])
    for b in range(2):
        for t in np.flatnonzero(mask[b]):
            freq = np.bincount(ours[:, b, t].ravel(), minlength=7) / (draws * 5)
            ref = np.bincount(oracle[:, b, t].ravel(), minlength=7) / (draws * 5)
            # Two empirical frequencies of 20k draws: standard error of the difference <= 0.005; 4 sigma.
            np.testing.assert_allclose(freq, ref, atol=0.02)
            expected = np.where(mask[b] & (np.arange(7) != t), 1 / (mask[b].sum() - 1), 0)
            np.testing.assert_allclose(freq, expected, atol=0.02)


def test_sample_negatives_respects_mask_and_padding():
    quantized = jnp.broadcast_to(jnp.arange(10, dtype=jnp.float32)[None, :, None], (2, 10, 3))
    mask = jnp.array([[True] * 6 + [False] * 4, [False, True] * 5])
    padding = jnp.array([[True] * 10, [True] * 7 + [False] * 3])
    negs = sample_negatives(jax.random.key(0), quantized, 2, mask=mask, padding_mask=padding)
    chex.assert_shape(negs, (2, 10, 2, 3))
    frames = np.asarray(negs[..., 0]).astype(int)
    _check_negative_indices(frames, np.asarray(mask & padding))


def test_sample_negatives_without_mask_uses_every_frame():
    quantized = jnp.broadcast_to(jnp.arange(6, dtype=jnp.float32)[None, :, None], (1, 6, 2))
    frames = np.asarray(sample_negatives(jax.random.key(1), quantized, 5)[..., 0]).astype(int)
    _check_negative_indices(frames, np.ones((1, 6), bool))


def test_too_many_negatives_is_a_clear_error():
    quantized = jnp.zeros((1, 6, 2))
    with pytest.raises(ValueError, match="num_negatives=6"):
        sample_negatives(jax.random.key(0), quantized, 6)
    with pytest.raises(ValueError, match="2 other frames"):
        sample_negatives(jax.random.key(0), quantized, 3, mask=jnp.array([[True, True, True, False, False, False]]))
    with pytest.raises(ValueError, match="num_negatives must be"):
        sample_negative_indices(jax.random.key(0), jnp.ones((1, 6), bool), 0)


def test_shape_errors():
    context, quantized, negatives, _ = _inputs()
    with pytest.raises(ValueError, match="must match"):
        contrastive_logits(context[:, :3], quantized, negatives)
    with pytest.raises(ValueError, match="negatives"):
        contrastive_logits(context, quantized, negatives[..., :2])
    with pytest.raises(ValueError, match="mask"):
        contrastive_loss(context, quantized, negatives, mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="reduction"):
        contrastive_loss(context, quantized, negatives, reduction="max")


@pytest.mark.parametrize("groups,num_vars", [(2, 320), (1, 7), (4, 16)])
def test_diversity_loss_matches_oracle_and_limits(groups, num_vars):
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (5, groups, num_vars)) * 3, axis=-1)
    np.testing.assert_allclose(
        jax.jit(diversity_loss, static_argnums=(1, 2))(probs, groups, num_vars),
        diversity_loss_from_scratch(np.asarray(probs), groups, num_vars),
        rtol=RTOL,
        atol=ATOL,
    )
    uniform = jnp.full((groups, num_vars), 1 / num_vars)
    # float32: the entropy of 320 terms carries ~1e-6 relative rounding, so "~0" means < 1e-5.
    assert abs(float(diversity_loss(uniform, groups, num_vars))) < 1e-5
    collapse = jax.nn.one_hot(jnp.zeros(groups, int), num_vars)
    total = groups * num_vars
    np.testing.assert_allclose(diversity_loss(collapse, groups, num_vars), (total - groups) / total, rtol=1e-6)


@hypothesis.settings(deadline=None, max_examples=40)
@hypothesis.given(
    logits=hnp.arrays(np.float32, (3, 2, 5), elements=st.floats(-30, 30, width=32)),
)
def test_diversity_loss_in_unit_interval(logits):
    value = float(diversity_loss(jax.nn.softmax(jnp.asarray(logits), axis=-1), 2, 5))
    assert -1e-6 <= value < 1


def test_diversity_loss_shape_error():
    with pytest.raises(ValueError, match=r"\[G, V\]"):
        diversity_loss(jnp.ones((2, 5)), 2, 4)


def test_same_codewords_marks_distractors_with_the_positives_codewords():
    codewords = jnp.array([[[0, 1], [0, 1], [2, 1], [0, 3]]])  # frames 0 and 1 share both codewords
    indices = jnp.array([[[1, 2], [0, 3], [3, 1], [0, 2]]])
    expected = [[[True, False], [True, False], [False, False], [False, False]]]
    np.testing.assert_array_equal(same_codewords(codewords, indices), expected)


def test_explicit_same_as_positive_overrides_vector_equality():
    context, quantized, negatives, _ = _inputs()
    flags = np.zeros((2, 9, 4), bool)
    flags[1, 2, 3] = True
    logits = contrastive_logits(context, quantized, negatives, same_as_positive=flags)
    expected_inf = np.zeros((2, 9, 5), bool)
    expected_inf[1, 2, 4] = True
    np.testing.assert_array_equal(np.isneginf(logits), expected_inf)
    with pytest.raises(ValueError, match="same_as_positive"):
        contrastive_logits(context, quantized, negatives, same_as_positive=flags[:, :3])
