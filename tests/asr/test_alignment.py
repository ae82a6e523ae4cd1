"""w2v_jax/asr/alignment.py: the batched, jitted Viterbi forced alignment against its NumPy oracle and
(where it imports) torchaudio's `forced_align`; segments and words."""

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
import torch

from w2v_jax.asr import alignment
from w2v_jax.data.vocabulary import Vocabulary

VOCAB = 7


def _log_probs(rng, time, peaky=False):
    logits = rng.standard_normal((time, VOCAB)) * (4.0 if peaky else 1.0)
    return np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float32)


def _utterances(seed, count=5, max_time=40, max_labels=8):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        labels = rng.integers(1, VOCAB, rng.integers(0 if i == 0 else 1, max_labels + 1))
        if i == 1 and len(labels) > 1:
            labels[1] = labels[0]  # a repeated token needs a blank between
        needed = len(labels) + int(np.sum(labels[1:] == labels[:-1]))
        time = int(rng.integers(max(needed, 1), max_time + 1))
        rows.append((_log_probs(rng, time, peaky=i % 2 == 0), labels))
    rows.append((_log_probs(rng, 3), np.asarray([2, 3, 4])))  # exactly as many frames as tokens
    return rows


def _batch(rows):
    time = max(len(lp) for lp, _ in rows)
    labels = max(len(t) for _, t in rows)
    log_probs = np.zeros((len(rows), time, VOCAB), np.float32)
    targets = np.full((len(rows), max(labels, 1)), 5, np.int32)  # padding is any id
    for b, (lp, t) in enumerate(rows):
        log_probs[b, : len(lp)] = lp
        targets[b, : len(t)] = t
    lengths = np.asarray([len(lp) for lp, _ in rows])
    return log_probs, lengths, targets, np.asarray([len(t) for _, t in rows])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_jitted_paths_and_scores_equal_the_numpy_oracle(seed):
    rows = _utterances(seed)
    paths, scores = alignment.forced_align(*_batch(rows), blank=0)
    for b, (lp, t) in enumerate(rows):
        path, score = alignment.forced_align_from_scratch(lp, t, blank=0)
        np.testing.assert_array_equal(paths[b, : len(lp)], path)
        np.testing.assert_array_equal(paths[b, len(lp) :], -1)
        # Each score is one log probability read from the same float32 array.
        np.testing.assert_allclose(scores[b, : len(lp)], score, rtol=0, atol=1e-6)
        # The path spells the transcript: collapse repeats, drop blanks.
        collapsed = [int(p) for i, p in enumerate(path) if p != 0 and (i == 0 or p != path[i - 1])]
        assert collapsed == list(t)


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(seed=st.integers(0, 10_000))
def test_the_path_is_the_best_one_ties_and_all(seed):
    # Quantised log probabilities make ties common; the oracle's path must score the Viterbi maximum,
    # found here by brute force over every valid path of a short utterance.
    rng = np.random.default_rng(seed)
    time, labels = int(rng.integers(2, 7)), rng.integers(1, 3, int(rng.integers(1, 3)))
    hypothesis.assume(len(labels) + int(np.sum(labels[1:] == labels[:-1])) <= time)
    lp = np.round(rng.standard_normal((time, 3)) * 2) / 2
    path, _ = alignment.forced_align_from_scratch(lp, labels, blank=0)
    jax_path, _ = alignment.forced_align(lp[None].astype(np.float32), [time], labels[None], [len(labels)])
    np.testing.assert_array_equal(jax_path[0], path)
    best = max(
        sum(lp[t, p] for t, p in enumerate(candidate))
        for candidate in np.ndindex(*(3,) * time)
        if [c for i, c in enumerate(candidate) if c != 0 and (i == 0 or c != candidate[i - 1])] == list(labels)
    )
    assert sum(lp[t, p] for t, p in enumerate(path)) == pytest.approx(best)


def test_same_path_and_scores_as_torchaudio():
    # torchaudio is no declared dependency (no build of it matches the test extra's torch), so this
    # parity check skips unless one is installed by hand; docs/transcription.md says so.
    try:
        from torchaudio.functional import forced_align  # noqa: PLC0415 - optional: torchaudio
    except (ImportError, OSError) as error:  # OSError: a torchaudio build for another torch
        pytest.skip(f"torchaudio unavailable: {error}")
    for lp, t in _utterances(7)[1:]:  # torchaudio takes one utterance of at least one token
        ours, our_scores = alignment.forced_align(lp[None], [len(lp)], t[None], [len(t)])
        theirs, their_scores = forced_align(torch.tensor(lp)[None], torch.tensor(t, dtype=torch.int32)[None], blank=0)
        np.testing.assert_array_equal(ours[0], theirs[0].numpy())
        np.testing.assert_allclose(our_scores[0], their_scores[0].numpy(), rtol=0, atol=1e-6)


def test_bad_input_is_named():
    lp = np.zeros((1, 3, VOCAB), np.float32)
    with pytest.raises(ValueError, match=r"utterance 0: its 3 tokens need 4 frames, it has 3"):
        alignment.forced_align(lp, [3], [[1, 1, 2]], [3])
    with pytest.raises(ValueError, match="log_probs must be"):
        alignment.forced_align(lp[0], [3], [[1]], [1])
    with pytest.raises(ValueError, match="blank must be in"):
        alignment.forced_align(lp, [3], [[1]], [1], blank=VOCAB)


def test_segments_merge_frames_and_words_join_letters():
    vocabulary = Vocabulary.from_symbols("ab")  # <pad>=0 ... |=4, a=5, b=6
    path = np.asarray([0, 5, 5, 0, 5, 4, 6, 6, 0])
    scores = np.log(np.asarray([0.9, 0.5, 0.7, 0.9, 0.8, 0.6, 1.0, 0.5, 0.9]))
    letters = alignment.token_segments(path, scores, vocabulary, blank=0)
    assert [(s.token, s.start, s.end) for s in letters] == [("a", 1, 3), ("a", 4, 5), ("|", 5, 6), ("b", 6, 8)]
    assert letters[0].score == pytest.approx(0.6)
    words = alignment.word_segments(letters, "|")
    assert [(w.token, w.start, w.end) for w in words] == [("aa", 1, 5), ("b", 6, 8)]
    assert words[0].score == pytest.approx((0.6 * 2 + 0.8) / 3)
    assert words[1].seconds(0.02) == {"token": "b", "start": 0.12, "end": 0.16, "score": 0.75}
