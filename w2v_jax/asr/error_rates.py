"""Word, character and phone error rates over a corpus (jiwer), with a plain edit-distance oracle.

Each rate is corpus-level, as jiwer and fairseq report it: the summed edit distance (substitutions +
deletions + insertions) over all utterances divided by the summed reference length. The rate
functions compare strings as given; `error_rate_metrics`, what the commands report, compares words
and letters in one normalised form on both sides (`w2v_jax.data.labels.normalize_text`: an
upper-case model's `THE CAT` is the reference's `the cat`) and phones as given.
- WER: words are the space-separated parts of each string (jiwer splits on " " only).
- CER: characters of each string with its ends stripped (spaces between words count).
- PER (any token error rate): each utterance is a sequence of tokens (phones).
`ErrorCounts` sums the same edits and lengths utterance by utterance, for corpora read in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from w2v_jax.data.labels import normalize_text

# The error rates of each label kind (the first is the default best-checkpoint metric's family).
METRICS = {"ltr": ("wer", "cer"), "phn": ("per",)}
_INSTALL_HINT = "error rates need jiwer: pip install -e '.[finetune]' (or pip install jiwer)"


def edit_distance_from_scratch(reference: Sequence, hypothesis: Sequence) -> int:
    """NumPy oracle: Levenshtein distance between two sequences (unit costs)."""
    previous = np.arange(len(hypothesis) + 1)
    for i, ref_item in enumerate(reference, start=1):
        current = np.empty_like(previous)
        current[0] = i
        for j, hyp_item in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_item != hyp_item))
        previous = current
    return int(previous[-1])


def error_rate_from_scratch(references: Sequence[Sequence], hypotheses: Sequence[Sequence]) -> float:
    """NumPy oracle: summed edit distance / summed reference length."""
    edits = sum(edit_distance_from_scratch(r, h) for r, h in zip(references, hypotheses, strict=True))
    return edits / sum(len(r) for r in references)


def _jiwer():
    try:
        import jiwer  # noqa: PLC0415 - optional: the `finetune` extra
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return jiwer


def _check(references: Sequence, hypotheses: Sequence, lengths: Sequence[int]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if sum(lengths) == 0:
        raise ValueError("the references are empty: an error rate needs at least one reference unit")


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER of hypotheses (one string per utterance) against references."""
    _check(references, hypotheses, [len(r.split()) for r in references])
    return float(_jiwer().wer(list(references), list(hypotheses)))


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus CER of hypotheses against references (characters, spaces included, ends stripped)."""
    _check(references, hypotheses, [len(r.strip()) for r in references])
    return float(_jiwer().cer(list(references), list(hypotheses)))


def token_error_rate(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> float:
    """Corpus error rate over token sequences (PER for phones); tokens must not contain whitespace."""
    _check(references, hypotheses, [len(r) for r in references])
    if any(not t or any(c.isspace() for c in t) for seq in (*references, *hypotheses) for t in seq):
        raise ValueError("tokens must be non-empty and free of whitespace")
    # A token sequence joined by spaces is a sentence whose words are the tokens.
    return float(_jiwer().wer([" ".join(r) for r in references], [" ".join(h) for h in hypotheses]))


def error_rate_metrics(references: Sequence[str], hypotheses: Sequence[str], kind: str) -> dict[str, float]:
    """{"wer", "cer"} for letter labels, references and hypotheses normalised as labels are
    (`normalize_text`), or {"per"} for phones, compared as given."""
    if kind == "phn":
        return {"per": token_error_rate([r.split() for r in references], [h.split() for h in hypotheses])}
    references, hypotheses = [normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses]
    return {"wer": word_error_rate(references, hypotheses), "cer": char_error_rate(references, hypotheses)}


class ErrorCounts:
    """Corpus error rates of one label kind accumulated batch by batch: each rate's summed edits
    (substitutions + deletions + insertions) and summed reference length, counted per utterance as
    jiwer counts them, so `rates()` equals `error_rate_metrics` of all the utterances at once."""

    def __init__(self, kind: str):
        self.kind = kind
        self.edits = dict.fromkeys(METRICS[kind], 0)
        self.lengths = dict.fromkeys(METRICS[kind], 0)

    def add(self, references: Sequence[str], hypotheses: Sequence[str]) -> None:
        """Counts a batch of utterances (strings as `error_rate_metrics` takes them, letters normalised as it does)."""
        if len(references) != len(hypotheses):
            raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
        jiwer = _jiwer()
        for reference, hypothesis in zip(references, hypotheses):
            if self.kind == "phn":
                self._count("per", jiwer.process_words(" ".join(reference.split()), " ".join(hypothesis.split())))
            else:  # one normalised form on both sides, as `error_rate_metrics`
                reference, hypothesis = normalize_text(reference), normalize_text(hypothesis)
                self._count("wer", jiwer.process_words(reference, hypothesis))
                self._count("cer", jiwer.process_characters(reference, hypothesis))

    def _count(self, metric: str, output: Any) -> None:
        self.edits[metric] += output.substitutions + output.deletions + output.insertions
        self.lengths[metric] += output.hits + output.substitutions + output.deletions

    def rates(self) -> dict[str, float]:
        """{"wer", "cer"} for letter labels or {"per"} for phones: summed edits / summed lengths."""
        if not all(self.lengths.values()):
            raise ValueError("the references are empty: an error rate needs at least one reference unit")
        return {m: float(self.edits[m]) / float(self.lengths[m]) for m in METRICS[self.kind]}
