"""The modified Kneser-Ney estimator, ARPA files, lexicons and the embedded corpus's LM."""

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


def test_lexicon_spells_words_in_the_vocabulary(tmp_path):
    vocabulary = Vocabulary.from_symbols("abc")
    path = lm.write_lexicon(["ab", "ba", "ab", "abz"], tmp_path / "lexicon.txt", vocabulary)
    assert path.read_text() == "ab\ta b |\nba\tb a |\n"
    assert lm.read_lexicon(path, vocabulary) == {"ab": [["a", "b", "|"]], "ba": [["b", "a", "|"]]}
    with pytest.raises(ValueError, match="upper.txt: no word of the text is spelled"):
        lm.write_lexicon(["ab"], tmp_path / "upper.txt", Vocabulary.from_symbols("AB"))


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
