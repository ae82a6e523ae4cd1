"""Beam search against greedy decoding and against a brute-force search under the decoder's scoring."""

import itertools
import math

import flashlight.lib.text  # noqa: F401 - the `decode` extra, a declared test dependency: missing, this module fails
import numpy as np
import pytest
import scipy.special
from flax import nnx

from tests.support.ctc import LAYER_CONFIG, VOCABULARY
from tests.support.launchers import run_main
from w2v_jax.asr import lm
from w2v_jax.asr.beam_search import BeamSearchDecoder, BeamSearchOptions, make_decoder
from w2v_jax.asr.decoding import GreedyDecoder, greedy_decode
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.cli import transcribe
from w2v_jax.data import default_manifest
from w2v_jax.data.manifest import read_manifest
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC

# blank, <unk>, the word delimiter and two letters: every labelling of a few frames is enumerable.
TINY = Vocabulary(("<pad>", "<unk>", "|", "a", "b"))
WIDE_BEAM = BeamSearchOptions(beam_size=10_000, beam_threshold=1e9)
# Scores: float32 emissions summed over <= 7 frames, float32 LM scores; measured differences <= 2e-6.
SCORE_ATOL = 1e-4


def best_alignment_score(
    log_probs: np.ndarray, labelling: tuple[int, ...], blank: int, label_first: bool = False
) -> float:
    """NumPy oracle: max over CTC alignments of `labelling` of the summed frame log-probabilities
    (`label_first`: only alignments whose first frame is the first label, not a blank)."""
    extended = [blank]
    for label in labelling:
        extended += [label, blank]
    best = np.full(len(extended), -np.inf)
    best[0] = -np.inf if label_first else log_probs[0, blank]
    if len(extended) > 1:
        best[1] = log_probs[0, extended[1]]
    for t in range(1, log_probs.shape[0]):
        previous = best.copy()
        for s, label in enumerate(extended):
            candidates = [previous[s]]
            if s >= 1:
                candidates.append(previous[s - 1])
            if s >= 2 and label != blank and label != extended[s - 2]:
                candidates.append(previous[s - 2])
            best[s] = max(candidates) + log_probs[t, label]
    return float(max(best[-1], best[-2] if len(extended) > 1 else -np.inf))


def labellings(num_frames: int, symbols: list[int]):
    for length in range(num_frames + 1):
        yield from itertools.product(symbols, repeat=length)


def write_lm(tmp_path, sentences, order=3, name="lm.arpa"):
    model = lm.estimate_kneser_ney(sentences, order)
    return model, model.write_arpa(tmp_path / name)


@pytest.mark.parametrize("separator", ["", " "])
def test_beam_one_without_lm_is_greedy(separator):
    vocabulary = Vocabulary.from_symbols("abcdé")
    decoder = BeamSearchDecoder(vocabulary, options=BeamSearchOptions(beam_size=1), separator=separator)
    greedy = GreedyDecoder(vocabulary, separator)
    rng = np.random.default_rng(0)
    for _ in range(100):
        logits = rng.normal(size=(int(rng.integers(1, 30)), len(vocabulary))).astype(np.float32) * 4
        length = int(rng.integers(1, logits.shape[0] + 1))
        assert decoder.decode(logits, length) == greedy.decode(logits, length)
        assert (
            greedy.decode(logits, length).text
            == greedy_decode(logits[None], np.array([length]), vocabulary, separator)[0]
        )


def test_greedy_transcript_frames_are_where_tokens_start():
    vocabulary = Vocabulary.from_symbols("ab")
    a, b, bar, blank = (vocabulary.token_to_id[t] for t in ("a", "b", "|", "<pad>"))
    logits = np.eye(len(vocabulary))[[blank, a, a, blank, a, bar, b, b]]
    transcript = GreedyDecoder(vocabulary).decode(logits)
    assert transcript.text == "aa b"
    assert transcript.tokens == ("a", "a", "|", "b")
    assert transcript.token_frames == (1, 4, 5, 6)


@pytest.mark.parametrize("lm_weight", [0.0, 0.7, 2.5])
def test_lexicon_free_beam_search_finds_the_brute_force_best(tmp_path, lm_weight):
    """Lexicon-free: acoustic best alignment + lm_weight * log10 p(every token, then </s>). The
    decoder starts as if after a `|`: a `|` on the first frame continues it, unscored by the LM."""
    model, path = write_lm(tmp_path, [["a", "b", "|"], ["b", "|", "a", "a", "|"], ["a", "|", "b", "b", "|"]])
    decoder = BeamSearchDecoder(TINY, path, options=dataclass_replace(WIDE_BEAM, lm_weight=lm_weight))
    rng = np.random.default_rng(1)
    for _ in range(6):
        logits = rng.normal(size=(5, len(TINY))).astype(np.float32) * 2
        log_probs = scipy.special.log_softmax(logits, axis=-1)
        best_score, best_labelling = -math.inf, None
        for labelling in labellings(5, [1, 2, 3, 4]):
            tokens = [TINY.tokens[i] for i in labelling]
            scores = [best_alignment_score(log_probs, labelling, 0) + lm_weight * model.sentence_log10(tokens)]
            if tokens[:1] == ["|"]:
                scores.append(
                    best_alignment_score(log_probs, labelling, 0, label_first=True)
                    + lm_weight * model.sentence_log10(tokens[1:])
                )
            if max(scores) > best_score:
                best_score, best_labelling = max(scores), labelling
        result = decoder.best(logits)
        assert result.score == pytest.approx(best_score, abs=SCORE_ATOL)
        transcript = decoder.decode(logits)
        assert transcript.tokens == tuple(TINY.tokens[i] for i in best_labelling)


def dataclass_replace(options, **changes):
    return BeamSearchOptions(**{**options.__dict__, **changes})


def lexicon_parse(tokens: list[str], spellings: dict[str, str]) -> list[str] | None:
    """The words a labelling spells with the lexicon decoder (`|`-terminated spellings; extra `|`s
    are silence), or None when it is not a sequence of lexicon words."""
    if tokens and tokens[-1] != "|":
        return None
    words = []
    for segment in "".join(tokens).split("|")[:-1] if tokens else []:
        if segment:
            if segment not in spellings:
                return None
            words.append(segment)
    return words


@pytest.mark.parametrize(("lm_weight", "word_score"), [(0.0, 0.0), (1.5, 0.0), (1.0, -2.0), (0.5, 3.0)])
def test_lexicon_beam_search_finds_the_brute_force_best(tmp_path, lm_weight, word_score):
    """Lexicon: acoustic best alignment + lm_weight * log10 p(words, </s>) + word_score per word;
    only lexicon words, each ending with `|`, over the emissions plus the appended final `|` frame."""
    words = {"ab": "a b |", "b": "b |", "ba": "b a |"}
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("".join(f"{w}\t{s}\n" for w, s in words.items()))
    model, path = write_lm(tmp_path, [["ab", "b"], ["b", "ba", "ab"], ["ba"]], order=2)
    options = dataclass_replace(WIDE_BEAM, lm_weight=lm_weight, word_score=word_score)
    decoder = BeamSearchDecoder(TINY, path, lexicon, options=options)
    rng = np.random.default_rng(2)
    for _ in range(6):
        logits = rng.normal(size=(5, len(TINY))).astype(np.float32) * 2
        log_probs = scipy.special.log_softmax(logits, axis=-1)
        final = np.full((1, len(TINY)), -1e4)
        final[0, 2] = 0.0
        log_probs = np.concatenate([log_probs, final])
        best_score, best_words = -math.inf, None
        for labelling in labellings(6, [2, 3, 4]):
            parsed = lexicon_parse([TINY.tokens[i] for i in labelling], words)
            if parsed is None:
                continue
            score = (
                best_alignment_score(log_probs, labelling, 0)
                + lm_weight * model.sentence_log10(parsed)
                + word_score * len(parsed)
            )
            if score > best_score:
                best_score, best_words = score, parsed
        assert decoder.best(logits).score == pytest.approx(best_score, abs=SCORE_ATOL)
        assert decoder.decode(logits).text == " ".join(best_words)


def test_a_lexicon_keeps_out_words_outside_it(tmp_path):
    vocabulary = Vocabulary.from_symbols("abc")
    ids = vocabulary.token_to_id
    (tmp_path / "lexicon.txt").write_text("ab\ta b |\n")
    # The acoustics spell "cab |": greedy reads it, the lexicon decoder can only emit "ab".
    logits = np.eye(len(vocabulary))[[ids[t] for t in ("c", "a", "b", "|")]] * 10
    assert GreedyDecoder(vocabulary).decode(logits).text == "cab"
    decoder = BeamSearchDecoder(vocabulary, lexicon=tmp_path / "lexicon.txt")
    assert decoder.decode(logits).text == "ab"


def test_bad_lm_and_lexicon_files_are_one_line_errors_naming_them(tmp_path):
    vocabulary = Vocabulary.from_symbols("ab")
    garbage = tmp_path / "garbage.arpa"
    garbage.write_text("this is not a language model\n")
    with pytest.raises(ValueError, match="garbage.arpa.*not an ARPA"):
        BeamSearchDecoder(vocabulary, garbage)
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0\0\0broken")
    with pytest.raises(ValueError, match="binary.bin: KenLM cannot read") as error:
        BeamSearchDecoder(vocabulary, binary)
    assert "\n" not in str(error.value)
    _, words_lm = write_lm(tmp_path, [["ab", "ba"]], order=2, name="words.arpa")
    bad_lexicon = tmp_path / "lexicon.txt"
    bad_lexicon.write_text("zz\tz z |\nzy z y |\n")
    with pytest.raises(ValueError, match=r"lexicon.txt: no spelling of the lexicon.*\['y', 'z'\]"):
        BeamSearchDecoder(vocabulary, words_lm, bad_lexicon)
    bad_lexicon.write_text("ab\n")
    with pytest.raises(ValueError, match="lexicon.txt:1: not a lexicon line"):
        BeamSearchDecoder(vocabulary, words_lm, bad_lexicon)
    with pytest.raises(ValueError, match="missing.arpa: no such language model"):
        BeamSearchDecoder(vocabulary, tmp_path / "missing.arpa")


def test_make_decoder_greedy_by_default_and_refuses_an_lm_without_beam(tmp_path):
    vocabulary = Vocabulary.from_symbols("ab")
    assert isinstance(make_decoder(vocabulary), GreedyDecoder)
    with pytest.raises(ValueError, match="--decoder=beam"):
        make_decoder(vocabulary, lm=tmp_path / "lm.arpa")
    with pytest.raises(ValueError, match="word_score needs a lexicon"):
        make_decoder(vocabulary, "beam", options=BeamSearchOptions(word_score=1.0))


def test_transcribe_decodes_with_beam_search_and_a_lexicon(tmp_path, capsys):
    """`transcribe --decoder=beam --lm --lexicon`: every word it prints is a lexicon word; greedy
    (the default) prints what `transcribe` gives."""
    model = Wav2Vec2ForCTC(LAYER_CONFIG, rngs=nnx.Rngs(4))
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 100
    save_checkpoint(LAYER_CONFIG, model, tmp_path / "ctc", vocabulary=VOCABULARY)
    (tmp_path / "text.txt").write_text("bad cab\nface bed\nfed a cab\n")
    lm.build_lm([tmp_path / "text.txt"], tmp_path / "lm.arpa", order=2)
    audio = str(read_manifest(default_manifest("valid")).file_path(0))
    run_main(transcribe, [f"--checkpoint={tmp_path / 'ctc'}", audio])
    greedy = capsys.readouterr().out.strip().split("\t")[1]
    flags = [f"--lm={tmp_path / 'lm.arpa'}", f"--lexicon={lm.lexicon_path(tmp_path / 'lm.arpa')}"]
    run_main(transcribe, [f"--checkpoint={tmp_path / 'ctc'}", "--decoder=beam", *flags, "--word_score=2", audio])
    beam = capsys.readouterr().out.strip().split("\t")[1]
    assert beam and set(beam.split()) <= {"bad", "cab", "face", "bed", "fed", "a"}
    assert greedy != beam


def test_a_word_lm_without_a_lexicon_decodes_with_its_words_spelled_in_the_model_tokens(tmp_path, caplog):
    """A word-level ARPA alone (transformers' `Wav2Vec2ProcessorWithLM` way) decodes as with the
    lexicon of its unigrams, which `build_lm` writes (an upper-case model spells them in its tokens);
    the words the model cannot spell are left out and counted, one line says what it does. A token
    LM alone stays lexicon-free."""
    upper = Vocabulary.from_symbols("ABCDEF")
    (tmp_path / "text.txt").write_text("bad cab\nface bed\nfed a cab\nzed\n")
    with caplog.at_level("INFO", logger="w2v_jax.asr"):
        lm.build_lm([tmp_path / "text.txt"], tmp_path / "lm.arpa", order=2, vocabulary=upper)
        alone = BeamSearchDecoder(upper, tmp_path / "lm.arpa", options=BeamSearchOptions(lm_weight=1.0))
    assert "1 of 7 words have letters outside the model's vocabulary and are left out, e.g. ['zed']" in caplog.text
    assert "lm.arpa: a word LM without a lexicon: decoding with the lexicon of its words" in caplog.text
    assert not alone.lexicon_free
    given = BeamSearchDecoder(
        upper, tmp_path / "lm.arpa", lm.lexicon_path(tmp_path / "lm.arpa"), BeamSearchOptions(lm_weight=1.0)
    )
    rng = np.random.default_rng(1)
    texts = []
    for _ in range(20):
        logits = rng.normal(size=(int(rng.integers(5, 25)), len(upper))).astype(np.float32) * 3
        texts.append(alone.decode(logits).text)
        assert alone.decode(logits) == given.decode(logits)
    assert any(texts) and {w for t in texts for w in t.split()} <= {"bad", "cab", "face", "bed", "fed", "a"}
    # A letter LM of the (lower-case) text scores an upper-case model's letters as a lower-case twin's.
    lm.build_lm([tmp_path / "text.txt"], tmp_path / "ltr.arpa", order=3, unit="ltr")
    options = BeamSearchOptions(lm_weight=2.0)
    upper_ltr = BeamSearchDecoder(upper, tmp_path / "ltr.arpa", options=options)
    lower_ltr = BeamSearchDecoder(Vocabulary.from_symbols("abcdef"), tmp_path / "ltr.arpa", options=options)
    assert upper_ltr.lexicon_free
    for _ in range(20):
        logits = rng.normal(size=(int(rng.integers(5, 25)), len(upper))).astype(np.float32) * 3
        assert upper_ltr.best(logits).score == pytest.approx(lower_ltr.best(logits).score, abs=SCORE_ATOL)
        assert upper_ltr.decode(logits).tokens == tuple(map(upper.model_token, lower_ltr.decode(logits).tokens))


@pytest.mark.parametrize("lm_weight", [0.0, 1.0])
def test_lexicon_beam_search_tokens_frames_and_words_agree(tmp_path, lm_weight):
    """A lexicon hypothesis's tokens spell its words (each word's spelling between the `|`s, the
    last one's `|` may be the appended final frame's, which no token lists), in an upper-case
    model's tokens, and each token has its own start frame among the real ones, increasing: the
    text, the tokens and the timestamps drawn from them describe one hypothesis."""
    upper = Vocabulary.from_symbols("ABCDEF")
    (tmp_path / "text.txt").write_text("bad cab\nface bed\nfed a cab\nab ba\n")
    lm.build_lm([tmp_path / "text.txt"], tmp_path / "lm.arpa", order=2, vocabulary=upper)
    options = BeamSearchOptions(lm_weight=lm_weight, word_score=1.0)
    decoder = BeamSearchDecoder(upper, tmp_path / "lm.arpa", lm.lexicon_path(tmp_path / "lm.arpa"), options)
    rng = np.random.default_rng(3)
    spoken = 0
    for _ in range(30):
        logits = rng.normal(size=(int(rng.integers(4, 30)), len(upper))).astype(np.float32) * 3
        transcript = decoder.decode(logits)
        spelled = [w for w in "".join(transcript.tokens).split("|") if w]
        assert spelled == [w.upper() for w in transcript.text.split()]
        assert list(transcript.token_frames) == sorted(set(transcript.token_frames))
        assert all(0 <= f < len(logits) for f in transcript.token_frames)
        spoken += len(spelled)
    assert spoken > 10
