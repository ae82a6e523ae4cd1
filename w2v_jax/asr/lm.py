"""N-gram language models for beam-search decoding: modified Kneser-Ney estimation, ARPA files, lexicons.

`estimate_kneser_ney` is interpolated modified Kneser-Ney (Chen and Goodman, 1998), as KenLM's
`lmplz` estimates it: the highest order counts n-grams, lower orders count the distinct words seen
before them (continuation counts; n-grams starting with `<s>` keep their counts, nothing precedes
`<s>`); three discounts per order from the count-of-counts, `D_k = k - (k + 1) Y t_{k+1} / t_k` with
`Y = t_1 / (t_1 + 2 t_2)` and `t_k` the number of that order's n-grams counted exactly `k` times
(D3 serves every count from 3 up); the unigrams interpolate with the uniform distribution over the
vocabulary (`<unk>` included). On text too small for those discounts (a count-of-count of zero, or
a discount outside `[0, k]`) it falls back to lmplz's `--discount_fallback` values 0.5, 1, 1.5.
Written as ARPA in backoff form: the probability of a seen n-gram is the interpolated one, the
backoff weight of a context is its interpolation weight, so every context's distribution sums to one.

`NgramLM` reads and scores ARPA files (log10, as KenLM); a malformed file is a one-line ValueError
naming the file. Lexicons are fairseq's and flashlight's format: a word, a tab, its spelling in the
vocabulary's tokens separated by spaces, ending with the word delimiter `|`.

Sentences come from text files (one sentence a line) or manifests (`X.tsv`: the `.wrd` labels
beside it, else `.ltr`; `.phn` for phone LMs), normalised by `data.labels.normalize_text`, the
normalisation of the labels and of the WER references. Units: words (`word`, with a lexicon),
letters with `|` after each word (`ltr`) or phones (`phn`): token LMs for lexicon-free decoding.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from w2v_jax.data.labels import letters_to_words, normalize_text, read_label_lines, words_to_letters
from w2v_jax.data.manifest import read_manifest
from w2v_jax.data.vocabulary import WORD_DELIMITER, Vocabulary

logger = logging.getLogger("w2v_jax.asr")

Unit = Literal["word", "ltr", "phn"]
UNITS = ("word", "ltr", "phn")
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LOG10_ZERO = -99.0  # ARPA's (and KenLM's) log10 probability of `<s>`, which is never predicted
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # lmplz --discount_fallback

Ngram = tuple[str, ...]


# ------------------------------------------------------------------------------------------------
# Reading text


def _manifest_sentences(path: Path, unit: Unit) -> list[list[str]]:
    num_rows = len(read_manifest(path))
    if unit == "phn":
        return [unicodedata.normalize("NFC", line).split() for line in read_label_lines(path, "phn", num_rows)]
    if path.with_suffix(".wrd").is_file():
        lines = read_label_lines(path, "wrd", num_rows)
    else:
        lines = [letters_to_words(line.split()) for line in read_label_lines(path, "ltr", num_rows)]
    return [_text_units(line, unit) for line in lines]


def _text_units(line: str, unit: Unit) -> list[str]:
    if unit == "word":
        return normalize_text(line).split()
    if unit == "ltr":
        return words_to_letters(line)
    return unicodedata.normalize("NFC", line).split()


def read_sentences(paths: Sequence[str | os.PathLike], unit: Unit = "word") -> list[list[str]]:
    """The sentences of text files (a line each) and manifests (their label files), as `unit`s.

    Empty sentences are dropped. A missing file is a ValueError naming it.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    sentences = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"{path}: no such text file or manifest")
        if path.suffix == ".tsv":
            sentences += _manifest_sentences(path, unit)
        else:
            lines = path.read_text(encoding="utf-8-sig").split("\n")
            sentences += [_text_units(line.rstrip("\r"), unit) for line in lines]
    return [s for s in sentences if s]


# ------------------------------------------------------------------------------------------------
# The model


@dataclasses.dataclass
class NgramLM:
    """A backoff n-gram LM: per order n (index n - 1), n-gram -> (log10 probability, log10 backoff)."""

    ngrams: list[dict[Ngram, tuple[float, float]]]

    @property
    def order(self) -> int:
        return len(self.ngrams)

    @property
    def vocabulary(self) -> list[str]:
        """The unigrams, `<s>` included."""
        return [gram[0] for gram in self.ngrams[0]]

    def log10_prob(self, context: Sequence[str], word: str) -> float:
        """log10 p(word | context) by ARPA's backoff rule; unknown words are `<unk>` (or -99 without it)."""
        if (word,) not in self.ngrams[0]:
            word = UNK
        context = tuple(w if (w,) in self.ngrams[0] else UNK for w in context)[-(self.order - 1) :]
        if self.order == 1:
            context = ()
        backoff = 0.0
        for start in range(len(context) + 1):
            history = context[start:]
            entry = self.ngrams[len(history)].get((*history, word))
            if entry is not None:
                return entry[0] + backoff
            if history:
                backoff += self.ngrams[len(history) - 1].get(history, (0.0, 0.0))[1]
        return LOG10_ZERO + backoff

    def sentence_log10(self, words: Sequence[str], eos: bool = True) -> float:
        """log10 p of a sentence after `<s>`, with `</s>` at the end when `eos`."""
        history = [BOS]
        total = 0.0
        for word in [*words, EOS] if eos else words:
            total += self.log10_prob(history, word)
            history.append(word)
        return total

    def write_arpa(self, path: str | os.PathLike) -> Path:
        """Writes the model in ARPA format (log10, `\\data\\` counts, one section per order)."""
        lines = ["", "\\data\\"]
        lines += [f"ngram {n + 1}={len(grams)}" for n, grams in enumerate(self.ngrams)]
        for n, grams in enumerate(self.ngrams):
            lines += ["", f"\\{n + 1}-grams:"]
            for gram, (prob, backoff) in grams.items():
                row = f"{prob:.7g}\t{' '.join(gram)}"
                lines.append(row + (f"\t{backoff:.7g}" if n + 1 < self.order and backoff != 0.0 else ""))
        lines += ["", "\\end\\", ""]
        path = Path(path)
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    @classmethod
    def read_arpa(cls, path: str | os.PathLike, max_order: int | None = None) -> NgramLM:
        """Reads an ARPA file, streaming it; anything malformed is a ValueError naming the file and
        the line. `max_order`: stop after the n-grams of that order (1: a large LM's words only)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such language model file")
        try:
            with path.open(encoding="utf-8") as lines:
                return cls(_parse_arpa(path, lines, max_order))
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not an ARPA language model (not UTF-8 text; a KenLM binary?)") from None


def _parse_arpa(path: Path, lines: Iterable[str], max_order: int | None) -> list[dict[Ngram, tuple[float, float]]]:
    counts: list[int] = []
    ngrams: list[dict[Ngram, tuple[float, float]]] = []
    section = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()

        def bad(why: str, number: int = number, raw: str = raw) -> ValueError:
            return ValueError(f"{path}:{number}: not an ARPA language model ({why}): {raw.strip()[:60]!r}")

        if not line:
            continue
        if line == "\\data\\":
            section = 0
        elif line == "\\end\\":
            break
        elif line.startswith("\\") and line.endswith("-grams:"):
            try:
                section = int(line[1:-7])
            except ValueError:
                raise bad("bad section header") from None
            if section != len(ngrams) + 1 or section > len(counts):
                raise bad("section out of order or not announced in \\data\\")
            if max_order is not None and section > max_order:
                break
            ngrams.append({})
        elif section == 0 and line.startswith("ngram "):
            try:
                counts.append(int(line.split("=", 1)[1]))
            except (IndexError, ValueError):
                raise bad("bad ngram count") from None
        elif section:
            fields = line.split()
            try:
                prob = float(fields[0])
                if len(fields) not in (section + 1, section + 2):
                    raise ValueError
                backoff = float(fields[-1]) if len(fields) == section + 2 else 0.0
            except (IndexError, ValueError):
                raise bad(f"expected a log10 probability, {section} words and an optional backoff") from None
            ngrams[-1][tuple(fields[1 : section + 1])] = (prob, backoff)
        else:
            raise bad("text outside the \\data\\ and n-gram sections")
    expected = len(counts) if max_order is None else min(len(counts), max_order)
    if not ngrams or len(ngrams) != expected:
        raise ValueError(f"{path}: not an ARPA language model (no \\data\\ header or missing n-gram sections)")
    for n, (grams, count) in enumerate(zip(ngrams, counts), 1):
        if len(grams) != count:
            raise ValueError(f"{path}: not an ARPA language model ({count} {n}-grams announced, {len(grams)} found)")
    return ngrams


# ------------------------------------------------------------------------------------------------
# Modified Kneser-Ney


def count_of_counts(counts: Iterable[int]) -> tuple[int, int, int, int]:
    """`t_1..t_4`: how many n-grams were counted exactly once, twice, three and four times (an n-gram
    counted five times or more is in none of them: Chen and Goodman's `n_k`, lmplz's)."""
    histogram = collections.Counter(counts)
    return histogram[1], histogram[2], histogram[3], histogram[4]


def kneser_ney_discounts(counts: Iterable[int]) -> tuple[float, float, float]:
    """D1, D2, D3+ from the count-of-counts (Chen and Goodman's estimate, their equation 26), or
    lmplz's fallback where a count-of-count is zero or a discount leaves `[0, k]` (as lmplz checks)."""
    t = count_of_counts(counts)
    if min(t) == 0:
        return FALLBACK_DISCOUNTS
    y = t[0] / (t[0] + 2 * t[1])
    discounts = (1 - 2 * y * t[1] / t[0], 2 - 3 * y * t[2] / t[1], 3 - 4 * y * t[3] / t[2])
    if not all(0 <= d <= k for k, d in enumerate(discounts, 1)):
        return FALLBACK_DISCOUNTS
    return discounts


def _raw_counts(sentences: Sequence[Sequence[str]], order: int) -> collections.Counter:
    """Every n-gram of order 1..`order` of the sentences with `<s>` and `</s>` around each, counted."""
    raw: collections.Counter[tuple[str, ...]] = collections.Counter()
    for sentence in sentences:
        padded = (BOS, *sentence, EOS)
        for n in range(1, order + 1):
            for end in range(n, len(padded) + 1):
                raw[padded[end - n : end]] += 1
    return raw


def _adjusted_counts(raw: collections.Counter, order: int) -> list[collections.Counter]:
    """Per order, the counts modified Kneser-Ney discounts: raw counts for the highest order and for
    n-grams starting with `<s>`, else the number of distinct words seen before the n-gram."""
    adjusted: list[collections.Counter[tuple[str, ...]]] = [collections.Counter() for _ in range(order)]
    for gram, count in raw.items():
        if len(gram) == order or gram[0] == BOS:
            adjusted[len(gram) - 1][gram] += count
        if len(gram) > 1:
            adjusted[len(gram) - 2][gram[1:]] += 1  # one more distinct word before the suffix
    del adjusted[0][(BOS,)]  # `<s>` is a context, never predicted
    return adjusted


def estimate_kneser_ney(sentences: Sequence[Sequence[str]], order: int, prune: Sequence[int] = ()) -> NgramLM:
    """Interpolated modified Kneser-Ney n-gram LM of `sentences` (lists of units), as the module says.

    Args:
      sentences: each a list of words (or tokens); `<s>` and `</s>` are added around each.
      order: n of the n-grams, at least 2.
      prune: per order (1-based position), n-grams whose count is below it are dropped (counts of
        order 1 are never pruned; the thresholds must not decrease, as lmplz's `--prune`); the
        backoff weights are recomputed so that every context still sums to one.
    """
    if order < 2:
        raise ValueError(f"order must be at least 2 (KenLM reads no unigram-only model), got {order}")
    if not sentences:
        raise ValueError("no text to estimate a language model from")
    for sentence in sentences:
        for unit in sentence:
            if unit in (BOS, EOS, UNK) or not unit or any(c.isspace() for c in unit):
                raise ValueError(f"text unit {unit!r} is reserved or contains whitespace")
    raw = _raw_counts(sentences, order)
    adjusted = _adjusted_counts(raw, order)
    vocabulary = sorted({w for sentence in sentences for w in sentence} | {EOS, UNK})
    probabilities: list[dict[Ngram, float]] = []
    backoffs: list[dict[Ngram, float]] = [{} for _ in range(order)]
    for n in range(1, order + 1):
        counts = adjusted[n - 1]
        discounts = kneser_ney_discounts(counts.values())
        totals: dict[Ngram, int] = collections.Counter()
        kinds: dict[Ngram, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
        for gram, count in counts.items():
            totals[gram[:-1]] += count
            kinds[gram[:-1]][min(count, 3) - 1] += 1
        gamma = {h: sum(d * k for d, k in zip(discounts, kinds[h])) / total for h, total in totals.items()}
        probs: dict[Ngram, float] = {}
        if n == 1:
            for word in vocabulary:
                count = counts.get((word,), 0)
                discounted = max(count - discounts[min(count, 3) - 1], 0.0) if count else 0.0
                probs[(word,)] = discounted / totals[()] + gamma[()] / len(vocabulary)
        else:
            for gram, count in counts.items():
                lower = probabilities[n - 2][gram[1:]]  # every suffix of a counted n-gram is counted
                probs[gram] = (count - discounts[min(count, 3) - 1]) / totals[gram[:-1]] + gamma[gram[:-1]] * lower
        for history, weight in gamma.items():
            if history:
                backoffs[n - 2][history] = weight
        probabilities.append(probs)
    _prune(probabilities, backoffs, raw, prune)
    ngrams: list[dict[tuple[str, ...], tuple[float, float]]] = []
    for n, probs in enumerate(probabilities):
        grams: dict[tuple[str, ...], tuple[float, float]] = {}
        if n == 0:
            grams[(BOS,)] = (LOG10_ZERO, math.log10(backoffs[0].get((BOS,), 1.0)) if order > 1 else 0.0)
        for gram, prob in sorted(probs.items()):
            backoff = backoffs[n].get(gram) if n + 1 < order else None
            grams[gram] = (math.log10(prob), math.log10(backoff) if backoff else 0.0)
        ngrams.append(grams)
    return NgramLM(ngrams)


def _prune(
    probabilities: list[dict[Ngram, float]],
    backoffs: list[dict[Ngram, float]],
    raw: collections.Counter,
    thresholds: Sequence[int],
) -> None:
    """Drops n-grams of order >= 2 seen fewer times than their order's threshold (the last threshold
    serves the orders after it), then sets the backoff of each context that lost an n-gram so that
    its distribution sums to one again (the kept n-grams keep their probabilities)."""
    thresholds = list(thresholds)
    if not thresholds:
        return
    if thresholds[0] != 0:
        raise ValueError(f"unigrams are never pruned: the first prune threshold must be 0, got {thresholds}")
    if any(b < a for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError(f"prune thresholds must not decrease with the order, got {thresholds}")
    touched: set[Ngram] = set()
    for n in range(1, len(probabilities)):
        threshold = thresholds[min(n, len(thresholds) - 1)]
        for gram in [g for g in probabilities[n] if raw[g] < threshold]:
            del probabilities[n][gram]
            touched.add(gram[:-1])
    for n in range(len(probabilities) - 1):
        children = collections.defaultdict(list)
        for gram in probabilities[n + 1]:
            children[gram[:-1]].append(gram)
        for history in list(backoffs[n]):
            if history not in probabilities[n] and history != (BOS,):
                del backoffs[n][history]  # a pruned n-gram is no longer a context
            elif history in touched:
                kept = sum(probabilities[n + 1][g] for g in children[history])
                lower = sum(probabilities[n][g[1:]] for g in children[history])
                backoffs[n][history] = (1.0 - kept) / (1.0 - lower)


# ------------------------------------------------------------------------------------------------
# Lexicons


def spell(word: str, unit_vocabulary: Vocabulary | None = None) -> list[str] | None:
    """A word's letters ending with `|` (fairseq's and flashlight's lexicon spelling), in
    `unit_vocabulary`'s tokens (its casing: `Vocabulary.model_token`); None when a letter is outside it."""
    letters = [*word, WORD_DELIMITER]
    if unit_vocabulary is None:
        return letters
    letters = [unit_vocabulary.model_token(letter) for letter in letters]
    return None if any(letter not in unit_vocabulary for letter in letters) else letters


def spell_words(words: Iterable[str], vocabulary: Vocabulary, source: str | os.PathLike) -> dict[str, list[str]]:
    """Each distinct word -> its spelling in `vocabulary`'s tokens (`spell`); the words it cannot
    spell are left out and counted in one log line naming `source`; none left is a ValueError."""
    spellings, left_out = {}, []
    for word in sorted(set(words)):
        spelling = spell(word, vocabulary)
        if spelling is None:
            left_out.append(word)
        else:
            spellings[word] = spelling
    if not spellings:
        raise ValueError(
            f"{source}: no word is spelled in the model's tokens (of {len(left_out)}, e.g. {left_out[:3]})"
        )
    if left_out:
        logger.warning(
            "%s: %d of %d words have letters outside the model's vocabulary and are left out, e.g. %s",
            source,
            len(left_out),
            len(left_out) + len(spellings),
            left_out[:5],
        )
    return spellings


def write_lexicon(words: Iterable[str], path: str | os.PathLike, vocabulary: Vocabulary | None = None) -> Path:
    """Writes `word<TAB>l e t t e r s |` for every distinct word, spelled in `vocabulary`'s tokens
    (`spell_words`: the words it cannot spell left out and counted; none left is a ValueError), or
    in the word's own letters when `vocabulary` is None."""
    if vocabulary is None:
        # Without a unit vocabulary every word has a spelling (`spell` gives None only with one).
        spellings = {word: spelling for word in sorted(set(words)) if (spelling := spell(word)) is not None}
    else:
        spellings = spell_words(words, vocabulary, path)
    path = Path(path)
    path.write_text("".join(f"{word}\t{' '.join(s)}\n" for word, s in spellings.items()), encoding="utf-8")
    return path


def read_lexicon(path: str | os.PathLike, vocabulary: Vocabulary) -> dict[str, list[list[str]]]:
    """word -> its spellings (token lists, in `vocabulary`'s casing: `Vocabulary.model_token`), from
    a lexicon file. A malformed line is a ValueError naming the file and the line; a spelling with a
    token outside `vocabulary` is left out, counted in one log line, and none left is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such lexicon file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a lexicon (not UTF-8 text)") from None
    lexicon: dict[str, list[list[str]]] = {}
    unknown: collections.Counter[str] = collections.Counter()
    left_out = 0
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split(maxsplit=1)
        if len(fields) != 2 or not fields[1].split():
            raise ValueError(f"{path}:{number}: not a lexicon line (a word, a tab, its spelling): {line[:60]!r}")
        word, spelling = fields[0].strip(), [vocabulary.model_token(token) for token in fields[1].split()]
        outside = [token for token in spelling if token not in vocabulary]
        if outside:
            unknown.update(outside)
            left_out += 1
            continue
        lexicon.setdefault(word, []).append(spelling)
    if not lexicon:
        raise ValueError(
            f"{path}: no spelling of the lexicon is in the model's tokens"
            + (f" (tokens outside the vocabulary: {sorted(unknown)[:10]})" if unknown else " (empty lexicon)")
        )
    if left_out:
        logger.warning(
            "%s: %d spellings with tokens outside the model's vocabulary left out (%s)",
            path,
            left_out,
            dict(unknown.most_common(10)),
        )
    return lexicon


# ------------------------------------------------------------------------------------------------
# The build_lm command's logic


def lexicon_path(lm_path: str | os.PathLike) -> Path:
    """Where `build_lm` writes the lexicon of an LM: `X.arpa` -> `X.lexicon.txt`."""
    return Path(lm_path).with_suffix(".lexicon.txt")


def build_lm(
    texts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    order: int = 4,
    unit: Unit = "word",
    prune: Sequence[int] = (),
    vocabulary: Vocabulary | None = None,
) -> tuple[NgramLM, Path, Path | None]:
    """Estimates a modified Kneser-Ney LM of the sentences of `texts` (`read_sentences`) and writes
    it as ARPA to `out`; for words also the lexicon (`lexicon_path(out)`, the words spelled in
    `vocabulary`'s letters, all words when None). Returns the model and the paths written."""
    sentences = read_sentences(texts, unit)
    model = estimate_kneser_ney(sentences, order, prune)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.write_arpa(path)
    lexicon = None
    if unit == "word":
        lexicon = write_lexicon((w for sentence in sentences for w in sentence), lexicon_path(path), vocabulary)
    counts = ", ".join(f"{len(grams)} {n}-grams" for n, grams in enumerate(model.ngrams, 1))
    logger.info("%s: %d sentences, %s", path, len(sentences), counts)
    return model, path, lexicon
