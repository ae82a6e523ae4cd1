"""The modified Kneser-Ney estimator, ARPA files, lexicons and the embedded corpus's LM."""

import shutil
import subprocess
import sys

import pytest
from flashlight.lib.text import dictionary
from flashlight.lib.text.decoder import kenlm

from tests.support import HANG_TIMEOUT
from w2v_jax.asr import lm
from w2v_jax.asr.beam_search import BeamSearchDecoder
from w2v_jax.data import default_manifest
from w2v_jax.data.labels import normalize_text
from w2v_jax.data.vocabulary import Vocabulary

CORPUS_LM = default_manifest("train").parent / "lm"
SENTENCES = [
    "the cat sat on the mat".split(),
    "the dog sat on the log".split(),
    "a cat and a dog".split(),
    "the cat ate".split(),
    "on the mat the cat sat".split(),
]


def every_context(model: lm.NgramLM):
    yield ()
    for grams in model.ngrams[:-1]:
        yield from grams


@pytest.mark.parametrize(("order", "prune"), [(2, ()), (3, ()), (4, ()), (3, (0, 2)), (4, (0, 1, 2))])
def test_every_context_sums_to_one(order, prune):
    """The ARPA model (probabilities and backoffs, read back by the backoff rule) is a distribution
    over the vocabulary (`<s>` excepted) after every context, pruned or not."""
    model = lm.estimate_kneser_ney(SENTENCES * 2 + [["the", "cat", "sat"]], order, prune)
    vocabulary = [w for w in model.vocabulary if w != lm.BOS]
    for context in every_context(model):
        total = sum(10 ** model.log10_prob(context, w) for w in vocabulary)
        assert total == pytest.approx(1.0, abs=1e-9), context


def test_pruning_drops_rare_ngrams_and_keeps_the_rest():
    full = lm.estimate_kneser_ney(SENTENCES, 3)
    pruned = lm.estimate_kneser_ney(SENTENCES, 3, (0, 2, 2))
    assert len(pruned.ngrams[0]) == len(full.ngrams[0])
    assert ("the", "cat") in pruned.ngrams[1] and ("cat", "ate") not in pruned.ngrams[1]
    assert len(pruned.ngrams[2]) < len(full.ngrams[2])
    with pytest.raises(ValueError, match="must not decrease"):
        lm.estimate_kneser_ney(SENTENCES, 3, (0, 3, 2))


def test_bigram_probabilities_by_hand():
    """Interpolated modified Kneser-Ney on two sentences, computed by hand (the fallback discounts
    0.5, 1, 1.5: the count-of-counts of so little text give none)."""
    model = lm.estimate_kneser_ney([["a", "b"], ["a"]], 2)
    # Unigram continuation counts: a (after <s>) 1, b (after a) 1, </s> (after b, a) 2; total 4;
    # discounted (1 - .5) / 4 for a and b, (2 - 1) / 4 for </s>; the interpolation weight
    # (.5 + .5 + 1) / 4 spread over the 4 words a, b, </s>, <unk>.
    uniform = 0.5 / 4
    assert 10 ** model.log10_prob((), "a") == pytest.approx(0.5 / 4 + uniform)
    assert 10 ** model.log10_prob((), "</s>") == pytest.approx(1 / 4 + uniform)
    assert 10 ** model.log10_prob((), "<unk>") == pytest.approx(uniform)
    # After <s>: raw count 2 for a (it starts both sentences): (2 - 1) / 2 + (1 / 2) * p(a).
    assert 10 ** model.log10_prob(("<s>",), "a") == pytest.approx(1 / 2 + 0.5 * (0.5 / 4 + uniform))
    # After a: b and </s> once each: (1 - .5) / 2 + (.5 + .5) / 2 * p(b).
    assert 10 ** model.log10_prob(("a",), "b") == pytest.approx(0.25 + 0.5 * (0.5 / 4 + uniform))


def test_kenlm_reads_the_arpa_file_and_gives_our_scores(tmp_path):
    """flashlight-text's KenLM (the decoder's scorer) on the file we write: the same sentence log10
    probabilities, unknown words included (float32 scores: measured differences <= 4e-6)."""
    sentences = lm.read_sentences([default_manifest("train")])
    for order in (2, 4):
        model = lm.estimate_kneser_ney(sentences, order)
        path = model.write_arpa(tmp_path / f"{order}.arpa")
        words = dictionary.Dictionary()
        for word in model.vocabulary:
            words.add_entry(word)
        scorer = kenlm.KenLM(str(path), words)
        for sentence in [*sentences[:30], ["zzz", "the", "old", "qqq"], []]:
            state, total = scorer.start(False), 0.0
            for word in sentence:
                state, score = scorer.score(state, words.get_index(word if word in model.vocabulary else lm.UNK))
                total += score
            _, score = scorer.finish(state)
            assert total + score == pytest.approx(model.sentence_log10(sentence), abs=2e-5)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_lmplz_estimates_the_same_model(order, tmp_path):
    """KenLM's own estimator on the corpus's text, each sentence once (so that the discounts of every
    order but the highest come from the count-of-counts, not the fallback): the same n-grams, log10
    probabilities and backoffs to 2e-5 (lmplz prints 7 significant digits of float32 values;
    measured <= 3.4e-7), `<s>`'s probability aside (lmplz writes 0, ours -99: it is never
    predicted). lmplz is C++ (KenLM's cmake build, not on the package index): skipped without it
    on PATH."""
    lmplz = shutil.which("lmplz")
    if lmplz is None:
        pytest.skip("KenLM's lmplz is not on PATH")
    unique = {}
    for sentence in lm.read_sentences([default_manifest("train"), default_manifest("valid")]):
        unique.setdefault(tuple(sentence), None)
    text = "".join(" ".join(sentence) + "\n" for sentence in unique)
    command = [lmplz, "-o", str(order), "--discount_fallback", "-S", "100M", "-T", str(tmp_path)]
    arpa = subprocess.run(command, input=text, capture_output=True, text=True, check=True, timeout=HANG_TIMEOUT)
    (tmp_path / "kenlm.arpa").write_text(arpa.stdout)
    theirs = lm.NgramLM.read_arpa(tmp_path / "kenlm.arpa")
    ours = lm.estimate_kneser_ney([list(s) for s in unique], order)
    for mine, lmplz_grams in zip(ours.ngrams, theirs.ngrams, strict=True):
        assert mine.keys() == lmplz_grams.keys()
        for gram in mine:
            probability, backoff = mine[gram]
            if gram != (lm.BOS,):
                assert probability == pytest.approx(lmplz_grams[gram][0], abs=2e-5), gram
            assert backoff == pytest.approx(lmplz_grams[gram][1], abs=2e-5), gram


def test_arpa_round_trip_and_bad_files_name_the_file(tmp_path):
    model = lm.estimate_kneser_ney(SENTENCES, 3)
    read = lm.NgramLM.read_arpa(model.write_arpa(tmp_path / "lm.arpa"))
    for ours, theirs in zip(model.ngrams, read.ngrams):
        assert ours.keys() == theirs.keys()
        for gram in ours:
            assert theirs[gram] == pytest.approx(ours[gram], abs=1e-6)
    assert lm.NgramLM.read_arpa(tmp_path / "lm.arpa", max_order=1).ngrams == read.ngrams[:1]
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\ta\n\\end\\\n")
    with pytest.raises(ValueError, match="bad.arpa: .*2 1-grams announced, 1 found"):
        lm.NgramLM.read_arpa(bad)
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\nnot-a-number a\n")
    with pytest.raises(ValueError, match="bad.arpa:5: not an ARPA"):
        lm.NgramLM.read_arpa(bad)
    bad.write_bytes(b"\xff\xfe binary")
    with pytest.raises(ValueError, match="bad.arpa: not an ARPA.*UTF-8"):
        lm.NgramLM.read_arpa(bad)


def test_sentences_from_text_files_and_manifests_are_normalised_as_labels(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Hello, World!\n\nIt’s  HERE.\n")
    assert lm.read_sentences([text]) == [["hello", "world"], ["it's", "here"]]
    assert lm.read_sentences([text], "ltr")[0] == ["h", "e", "l", "l", "o", "|", "w", "o", "r", "l", "d", "|"]
    train = default_manifest("train")
    wrd = train.with_suffix(".wrd").read_text(encoding="utf-8").splitlines()
    assert lm.read_sentences([train]) == [normalize_text(line).split() for line in wrd if normalize_text(line)]
    phones = train.with_suffix(".phn").read_text(encoding="utf-8").splitlines()
    assert lm.read_sentences([train], "phn") == [line.split() for line in phones if line.split()]
    with pytest.raises(ValueError, match="missing.txt: no such text file"):
        lm.read_sentences([tmp_path / "missing.txt"])


def test_lexicon_spells_words_in_the_vocabulary(tmp_path, caplog):
    vocabulary = Vocabulary.from_symbols("abc")
    with caplog.at_level("WARNING", logger="w2v_jax.asr"):
        path = lm.write_lexicon(["ab", "ba", "ab", "abz"], tmp_path / "lexicon.txt", vocabulary)
    assert path.read_text() == "ab\ta b |\nba\tb a |\n"
    assert "1 of 3 words have letters outside the model's vocabulary and are left out, e.g. ['abz']" in caplog.text
    assert lm.read_lexicon(path, vocabulary) == {"ab": [["a", "b", "|"]], "ba": [["b", "a", "|"]]}
    with pytest.raises(ValueError, match=r"none.txt: no word is spelled in the model's tokens \(of 1"):
        lm.write_lexicon(["ab"], tmp_path / "none.txt", Vocabulary.from_symbols("xy"))


def test_an_upper_case_vocabulary_spells_the_lower_case_words(tmp_path, caplog):
    """Words stay as the text has them (normalised: lower case); their spellings are in the model's
    tokens, so an upper-case model (fairseq's LibriSpeech dictionary) decodes with the lexicon, and a
    lower-case lexicon file reads into its tokens; a spelling it cannot make is left out, counted."""
    upper = Vocabulary.from_symbols("ABC'")
    path = lm.write_lexicon(["ab", "c'a"], tmp_path / "lexicon.txt", upper)
    assert path.read_text() == "ab\tA B |\nc'a\tC ' A |\n"
    lower = tmp_path / "lower.txt"
    lower.write_text("ab\ta b |\nba\tb a |\nbad\tb a d |\n")
    with caplog.at_level("WARNING", logger="w2v_jax.asr"):
        assert lm.read_lexicon(lower, upper) == {"ab": [["A", "B", "|"]], "ba": [["B", "A", "|"]]}
    assert "lower.txt: 1 spellings with tokens outside the model's vocabulary left out ({'d': 1})" in caplog.text
    lower.write_text("dd\td d |\n")
    with pytest.raises(ValueError, match=r"lower.txt: no spelling of the lexicon is in the model's tokens.*\['d'\]"):
        lm.read_lexicon(lower, upper)


def test_discounts_count_ngrams_seen_exactly_k_times():
    """Chen and Goodman's D1, D2, D3+ from n_1..n_4, the n-grams seen exactly 1..4 times, on counts
    where those are known: n = (10, 4, 3, 2) plus 10 n-grams seen 5 to 9 times, which count in no
    n_k. By hand: Y = 10 / (10 + 8) = 5/9; D1 = 1 - 2 Y 4/10 = 5/9; D2 = 2 - 3 Y 3/4 = 3/4;
    D3+ = 3 - 4 Y 2/3 = 41/27. (Counting the n-grams seen four times or more as n_4, 12 here, gives
    D3+ = 3 - 4 Y 12/3 < 0, and the fixed fallback discounts.)"""
    counts = [1] * 10 + [2] * 4 + [3] * 3 + [4] * 2 + [5] * 4 + [6, 7, 8, 9, 9, 9]
    assert lm.count_of_counts(counts) == (10, 4, 3, 2)
    assert lm.kneser_ney_discounts(counts) == pytest.approx((5 / 9, 3 / 4, 41 / 27), abs=1e-12)
    assert lm.kneser_ney_discounts([1, 1, 2, 3, 5, 5]) == lm.FALLBACK_DISCOUNTS  # no n-gram seen 4 times


def test_the_estimator_discounts_the_highest_order_by_its_count_of_counts():
    """One-word sentences, word i repeated c_i times: its bigrams `<s> w` and `w </s>` are seen
    exactly c_i times. Counts 1 (5 words), 2 (2), 3 (1), 4 (1), 6 (2): the bigrams' n_1..n_4 are
    (10, 4, 2, 2), so Y = 5/9, D1 = 5/9, D2 = 2 - 3 Y 2/4 = 7/6, D3+ = 3 - 4 Y 2/2 = 7/9. A word's
    context holds one bigram (`w </s>`, seen c times), so its backoff weight (the mass its discount
    frees, D(c) / c) is D1 for a word seen once, D2 / 2 twice, D3+ / 4 four times; after `<s>` the
    freed mass is (5 D1 + 2 D2 + 4 D3+) / 28 = 37/126 (28 sentences)."""
    repeats = {"a1": 1, "a2": 1, "a3": 1, "a4": 1, "a5": 1, "b1": 2, "b2": 2, "c": 3, "d": 4, "e1": 6, "e2": 6}
    sentences = [[word] for word, count in repeats.items() for _ in range(count)]
    model = lm.estimate_kneser_ney(sentences, 2)

    def backoff(word):
        return 10 ** model.ngrams[0][(word,)][1]

    assert backoff("a1") == pytest.approx(5 / 9, abs=1e-6)
    assert backoff("b1") == pytest.approx(7 / 6 / 2, abs=1e-6)
    assert backoff("d") == pytest.approx(7 / 9 / 4, abs=1e-6)
    assert backoff("<s>") == pytest.approx(37 / 126, abs=1e-6)


def test_the_corpus_lm_is_the_commands_output_on_the_train_text_only(tmp_path):
    """The checked-in LM and lexicon are what build_lm writes from the train split; no valid sentence
    is in that text, and the valid split's words out of the train text are out of the lexicon."""
    arpa = next(CORPUS_LM.glob("*.arpa"))
    order = len(lm.NgramLM.read_arpa(arpa).ngrams)
    out = tmp_path / arpa.name
    command = [sys.executable, "-m", "experiments.build_lm", f"--text={default_manifest('train')}"]
    command += [f"--order={order}", f"--out={out}"]
    subprocess.run(command, check=True, timeout=HANG_TIMEOUT, capture_output=True)
    assert out.read_text() == arpa.read_text()
    assert lm.lexicon_path(out).read_text() == lm.lexicon_path(arpa).read_text()
    train = {tuple(s) for s in lm.read_sentences([default_manifest("train")])}
    valid = [tuple(s) for s in lm.read_sentences([default_manifest("valid")])]
    assert len(valid) == 30 and not train & set(valid)
    lexicon = lm.read_lexicon(lm.lexicon_path(arpa), Vocabulary.from_symbols({c for s in train for w in s for c in w}))
    assert set(lexicon) == {w for s in train for w in s}


def test_without_the_decode_extra_beam_search_names_it(monkeypatch):
    for name in ("flashlight", "flashlight.lib", "flashlight.lib.text", "flashlight.lib.text.decoder"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` raises ImportError, as when not installed
    with pytest.raises(ImportError, match=r"'\.\[decode\]' \(the `decode` extra\)"):
        BeamSearchDecoder(Vocabulary.from_symbols("ab"))
