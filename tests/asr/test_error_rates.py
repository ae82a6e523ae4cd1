"""WER, CER and PER (jiwer) against a plain edit-distance oracle."""

import sys

import numpy as np
import pytest

from w2v_jax.asr.error_rates import (
    ErrorCounts,
    char_error_rate,
    edit_distance_from_scratch,
    error_rate_from_scratch,
    error_rate_metrics,
    token_error_rate,
    word_error_rate,
)


@pytest.mark.parametrize(
    "reference, hypothesis, distance",
    [
        ("", "", 0),
        ("abc", "", 3),
        ("", "ab", 2),
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        (["the", "cat"], ["a", "cat", "sat"], 2),
    ],
)
def test_edit_distance_oracle(reference, hypothesis, distance):
    assert edit_distance_from_scratch(reference, hypothesis) == distance
    assert edit_distance_from_scratch(hypothesis, reference) == distance


def _random_sentences(seed, count=40):
    """Sentences over a tiny alphabet, hypotheses as corrupted references (some empty)."""
    rng = np.random.default_rng(seed)
    words = ["a", "ab", "ba", "abc", "c", "ça", "l'a"]

    def sentence(low):
        return " ".join(rng.choice(words, rng.integers(low, 7)))

    references = [sentence(1) for _ in range(count)]
    hypotheses = [sentence(0) if rng.random() < 0.5 else r for r in references]
    hypotheses[0], hypotheses[1] = "", hypotheses[1] + "  " + "c"  # empty; two spaces inside
    return references, hypotheses


@pytest.mark.parametrize("seed", range(3))
def test_rates_match_the_oracle(seed):
    references, hypotheses = _random_sentences(seed)
    assert word_error_rate(references, hypotheses) == pytest.approx(
        error_rate_from_scratch([r.split() for r in references], [h.split() for h in hypotheses]), rel=1e-12
    )
    assert char_error_rate(references, hypotheses) == pytest.approx(
        error_rate_from_scratch([r.strip() for r in references], [h.strip() for h in hypotheses]), rel=1e-12
    )
    phones_ref, phones_hyp = [r.split() for r in references], [h.split() for h in hypotheses]
    assert token_error_rate(phones_ref, phones_hyp) == pytest.approx(
        error_rate_from_scratch(phones_ref, phones_hyp), rel=1e-12
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["ltr", "phn"])
def test_counts_added_batch_by_batch_give_the_corpus_rates_exactly(seed, kind):
    """Streamed evaluation's totals: the same summed integers as jiwer's corpus call, so the rates are
    equal as floats, not only close."""
    references, hypotheses = _random_sentences(seed)
    counts = ErrorCounts(kind)
    for begin in range(0, len(references), 7):
        counts.add(references[begin : begin + 7], hypotheses[begin : begin + 7])
    assert counts.rates() == error_rate_metrics(references, hypotheses, kind)
    assert sum(counts.lengths.values()) > 0 and sum(counts.edits.values()) > 0


def test_known_values():
    assert word_error_rate(["the cat sat", "on"], ["the bat sat down", ""]) == 3 / 4
    assert char_error_rate(["ab c"], ["ab"]) == 2 / 4
    assert token_error_rate([["aɪ", "t"]], [["aɪ", "t", "t"]]) == 1 / 2


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="references are empty"):
        char_error_rate(["", " "], ["a", "b"])
    with pytest.raises(ValueError, match="whitespace"):
        token_error_rate([["a b"]], [["a"]])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        ErrorCounts("ltr").add(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="references are empty"):
        ErrorCounts("phn").rates()


def test_missing_jiwer_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jiwer", None)  # makes `import jiwer` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[finetune\]'"):
        word_error_rate(["a"], ["a"])


def test_the_commands_metrics_compare_one_normalised_form():
    """An upper-case model's hypotheses against the normalised (lower-case) references: the words
    are the same, so are the rates; phones are symbols, compared as given."""
    references = ["the cat's hat", "a dog"]
    assert error_rate_metrics(references, ["THE CAT’S HAT", "A DOG."], "ltr") == {"wer": 0.0, "cer": 0.0}
    lower = error_rate_metrics(references, ["the cap hat", "dog"], "ltr")
    assert error_rate_metrics(references, ["THE CAP HAT", "DOG"], "ltr") == lower
    assert lower["wer"] == pytest.approx(2 / 5)
    assert error_rate_metrics(["AH t"], ["ah t"], "phn") == {"per": pytest.approx(1 / 2)}
