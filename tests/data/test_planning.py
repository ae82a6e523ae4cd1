"""Several corpora in one epoch (w2v_jax.data.planning.corpus_draws): every bucket draws whole global
batches, each corpus's rows are its share of the epoch to within one global batch, and a corpus or an
epoch that comes to nothing is an error naming it."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest

from w2v_jax.data.planning import corpus_draws


def _names(num_corpora):
    return [f"c{i}" for i in range(num_corpora)]


@st.composite
def _epochs(draw):
    buckets, corpora = draw(st.integers(1, 5)), draw(st.integers(2, 4))
    counts = draw(hnp.arrays(np.int64, (buckets, corpora), elements=st.integers(0, 60)))
    hypothesis.assume(counts.sum(axis=0).all())  # the pipeline refuses a corpus with no usable utterance
    weights = draw(hnp.arrays(np.float64, corpora, elements=st.floats(0.01, 1.0)))
    sizes = draw(hnp.arrays(np.int64, buckets, elements=st.integers(1, 16)))
    return counts, weights / weights.sum(), sizes


@hypothesis.settings(deadline=None, max_examples=300)
@hypothesis.given(epoch=_epochs())
def test_whole_batches_at_each_corpus_share_to_within_one_batch(epoch):
    counts, probabilities, sizes = epoch
    try:
        draws = corpus_draws(counts, probabilities, sizes, _names(counts.shape[1]))
    except ValueError as error:
        # Only for an epoch of no batch, or a corpus whose share comes to no row.
        message = str(error)
        assert "hold no full global batch" in message or "get no utterance of an epoch" in message
        return
    rows = draws.sum()
    assert rows > 0 and (draws.sum(axis=1) % sizes == 0).all()  # whole batches, so an epoch has a batch
    assert not draws[counts == 0].any()  # a corpus is drawn only where it has utterances
    assert draws.sum(axis=0).all()
    np.testing.assert_array_less(np.abs(draws.sum(axis=0) - probabilities * rows), sizes.max() + 1e-9)


def test_a_corpus_whose_share_rounds_to_nothing_is_named():
    # 999:1 over 100 utterances: the small corpus's share is 0.1 utterance.
    counts = np.array([[90, 10]])
    with pytest.raises(ValueError, match=r"corpora \['rare'\] get no utterance of an epoch of 100 rows"):
        corpus_draws(counts, np.array([0.999, 0.001]), np.array([4]), ["common", "rare"])


def test_an_epoch_of_no_batch_is_an_error_not_a_division_by_zero():
    # Three buckets of 3 utterances each, 4 rows a batch: no bucket holds one.
    counts = np.array([[2, 1], [1, 2], [2, 1]])
    with pytest.raises(ValueError, match=r"hold no full global batch of \[4, 4, 4\] rows"):
        corpus_draws(counts, np.array([0.5, 0.5]), np.array([4, 4, 4]), ["a", "b"])


def test_a_small_weight_corpus_spread_thin_is_drawn_at_its_share():
    # One utterance of the small corpus in each of 10 buckets at weight 0.004 of 510: 2 draws an
    # epoch, 0.2 a bucket (rounding per bucket drew none while the log printed p=0.004).
    counts = np.array([[1, 50]] * 10)
    draws = corpus_draws(counts, np.array([0.004, 0.996]), np.full(10, 8), ["thin", "thick"])
    rows = draws.sum()
    assert draws[:, 0].sum() >= 1 and abs(draws[:, 0].sum() - 0.004 * rows) <= 8
    assert (draws.sum(axis=1) % 8 == 0).all()
