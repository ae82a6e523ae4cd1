"""Span masking: the NumPy oracle against transformers draw for draw, the JAX sampler in distribution."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from w2v_jax.masking import (
    compute_mask_indices,
    compute_mask_indices_numpy,
    max_num_spans,
    padding_mask_from_lengths,
)

TIME = 49  # frames of one second of audio
LENGTHS = np.array([49, 30, 17])  # the two last rows are padded


def _reference(seed, shape, mask_prob, mask_length, min_masks, lengths=None):
    """transformers' sampler (global NumPy RNG), with a right-padded frame attention mask."""
    attention_mask = None
    if lengths is not None:
        attention_mask = torch.tensor(np.arange(shape[1])[None, :] < lengths[:, None], dtype=torch.long)
    np.random.seed(seed)
    return _compute_mask_indices(shape, mask_prob, mask_length, attention_mask=attention_mask, min_masks=min_masks)


@pytest.mark.parametrize(
    "mask_prob, mask_length, min_masks, lengths",
    [(0.65, 10, 2, None), (0.65, 4, 2, LENGTHS), (0.05, 3, 1, LENGTHS), (0.3, 1, 0, None)],
)
def test_numpy_oracle_is_transformers_draw_for_draw(mask_prob, mask_length, min_masks, lengths):
    shape = (3, TIME)
    for seed in range(25):
        expected = _reference(seed, shape, mask_prob, mask_length, min_masks, lengths)
        rng = np.random.RandomState(seed)
        ours = compute_mask_indices_numpy(shape, mask_prob, mask_length, min_masks, lengths, rng)
        np.testing.assert_array_equal(ours, expected)


def test_numpy_oracle_leaves_padding_of_too_short_rows_alone():
    # A row shorter than the span gets no span; transformers then marks its last (padding) frame.
    lengths = np.array([TIME, 5])
    expected = _reference(0, (2, TIME), 0.65, 10, 2, lengths)
    ours = compute_mask_indices_numpy((2, TIME), 0.65, 10, 2, lengths, np.random.RandomState(0))
    assert expected[1, -1] and not ours[1].any()
    np.testing.assert_array_equal(ours[0], expected[0])


@functools.lru_cache(maxsize=None)
def _jax_draws(mask_prob, mask_length, min_masks, num_draws):
    """num_draws masks of shape [3, TIME] with LENGTHS, sampled by one jitted vmap."""
    sample = jax.jit(
        jax.vmap(
            lambda key: compute_mask_indices(key, (3, TIME), mask_prob, mask_length, min_masks, jnp.asarray(LENGTHS))
        )
    )
    return np.asarray(sample(jax.random.split(jax.random.key(0), num_draws)))


def _reference_draws(mask_prob, mask_length, min_masks, num_draws):
    return np.stack(
        [_reference(seed, (3, TIME), mask_prob, mask_length, min_masks, LENGTHS) for seed in range(num_draws)]
    )


def _run_lengths(rows: np.ndarray) -> np.ndarray:
    """Lengths of the runs of consecutive True of every row."""
    padded = np.pad(rows.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    return (np.nonzero(edges == -1)[1] - np.nonzero(edges == 1)[1]).astype(np.float64)


@pytest.mark.parametrize("mask_prob, mask_length, min_masks", [(0.65, 4, 2), (0.65, 10, 2), (0.2, 3, 1)])
def test_jax_sampler_matches_transformers_in_distribution(mask_prob, mask_length, min_masks):
    n = 4000
    ours = _jax_draws(mask_prob, mask_length, min_masks, n)
    reference = _reference_draws(mask_prob, mask_length, min_masks, n)
    for row, length in enumerate(LENGTHS):
        real_ours, real_ref = ours[:, row, :length], reference[:, row, :length]
        # Masked fraction per row: 5 standard errors of the difference of two means.
        count_ours, count_ref = real_ours.sum(1), real_ref.sum(1)
        se = np.sqrt(count_ours.var() / n + count_ref.var() / n) + 1e-9
        assert abs(count_ours.mean() - count_ref.mean()) < 5 * se, (row, count_ours.mean(), count_ref.mean())
        # Same spread of the masked count.
        np.testing.assert_allclose(count_ours.std(), count_ref.std(), rtol=0.1, atol=0.05)
        # Span statistics: mean length of the masked runs (overlapping spans merge) and their number.
        runs_ours, runs_ref = _run_lengths(real_ours), _run_lengths(real_ref)
        np.testing.assert_allclose(runs_ours.mean(), runs_ref.mean(), rtol=0.03)
        np.testing.assert_allclose(runs_ours.size / n, runs_ref.size / n, rtol=0.03)
        # Where masks fall: per-frame frequency (ends are masked less), binomial 5-sigma bands.
        freq_ours, freq_ref = real_ours.mean(0), real_ref.mean(0)
        band = 5 * np.sqrt(freq_ref * (1 - freq_ref) * 2 / n) + 1e-3
        assert np.all(np.abs(freq_ours - freq_ref) <= band)
    # Neither masks padding (transformers marks it only for rows too short for a span).
    for row, length in enumerate(LENGTHS):
        assert not ours[:, row, length:].any()


@functools.lru_cache(maxsize=None)
def _jitted_sampler(shape, mask_prob, mask_length, min_masks):
    return jax.jit(lambda key, lengths: compute_mask_indices(key, shape, mask_prob, mask_length, min_masks, lengths))


@pytest.mark.parametrize(
    "time, mask_prob, mask_length, min_masks",
    [(TIME, 0.65, 10, 2), (TIME, 0.65, 4, 2), (20, 1.0, 3, 0), (12, 0.05, 1, 3), (10, 0.3, 10, 1)],
)
@settings(max_examples=20, deadline=None)
@given(fractions=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2), seed=st.integers(0, 2**16))
def test_sampler_laws(time, mask_prob, mask_length, min_masks, fractions, seed):
    lengths = np.array([time, *(int(f * time) for f in fractions)])
    sample = _jitted_sampler((3, time), mask_prob, mask_length, min_masks)
    mask = np.asarray(sample(jax.random.key(seed), jnp.asarray(lengths)))
    chex.assert_shape(mask, (3, time))
    bound = max_num_spans(time, mask_prob, mask_length, min_masks)
    for row, length in enumerate(lengths):
        assert not mask[row, length:].any()  # never padding
        runs = _run_lengths(mask[row : row + 1])
        assert np.all(runs >= mask_length)  # whole spans only
        assert mask[row].sum() <= bound * mask_length
        # min_masks honoured: that many distinct span starts cover at least L + spans - 1 frames.
        spans_that_fit = min(min_masks, time // mask_length, max(length - mask_length + 1, 0))
        assert mask[row].sum() >= (mask_length + spans_that_fit - 1 if spans_that_fit else 0)


def test_same_key_same_mask_and_static_shapes_under_jit():
    sample = jax.jit(lambda key: compute_mask_indices(key, (2, TIME), 0.65, 10, 2))
    a, b = sample(jax.random.key(1)), sample(jax.random.key(1))
    chex.assert_type(a, bool)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample(jax.random.key(2)))


def test_zero_probability_without_min_masks_masks_nothing():
    assert max_num_spans(TIME, 0.0, 10, 0) == 0
    assert not _jitted_sampler((2, TIME), 0.0, 10, 0)(jax.random.key(0), jnp.array([TIME, 20])).any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mask_length=50), "longer than the 49 frames"),
        (dict(mask_length=10, min_masks=5), "min_masks=5"),
        (dict(mask_length=0), "mask_length must be >= 1"),
        (dict(mask_prob=1.5), "mask_prob"),
        (dict(frame_lengths=np.array([49])), "frame_lengths must be \\[batch\\]"),
        (dict(frame_lengths=np.array([49, 50])), "frame_lengths must be in"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = dict(mask_prob=0.65, mask_length=10, min_masks=2, frame_lengths=None) | kwargs
    with pytest.raises(ValueError, match=match):
        compute_mask_indices(jax.random.key(0), (2, TIME), **arguments)
    with pytest.raises(ValueError, match=match):
        compute_mask_indices_numpy((2, TIME), **arguments)


def test_padding_mask_from_lengths():
    np.testing.assert_array_equal(
        padding_mask_from_lengths(jnp.array([3, 1]), 4), [[True, True, True, False], [True, False, False, False]]
    )
