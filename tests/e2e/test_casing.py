"""A model whose vocabulary is the upper-cased twin of a lower-case one (fairseq's LibriSpeech
`dict.ltr.txt`, transformers' `facebook/wav2vec2-base-960h`): the same head weights, its letters
renamed to upper case. Labels, references and LM text are normalised to lower case; every command
gives the twins the same error rates, alignments, LM decoding and LMs; their transcripts differ only
in case, by the model's casing. The twins are the shared tiny fine-tuning run's best model
(`tiny_finetuning`, tests/conftest.py) with its blank's logit lowered by 1000 and the word
delimiter's by 1, so that every frame spells a letter and each comparison covers many tokens. They
are called through the library functions the commands call, and one command (`w2v-align`) through
its launcher.
"""

import json

import numpy as np
import pytest

from tests.support.launchers import run_main
from w2v_jax.asr import lm, timestamps
from w2v_jax.asr.beam_search import BeamSearchDecoder, BeamSearchOptions
from w2v_jax.asr.evaluator import evaluate_finetuned_checkpoint
from w2v_jax.asr.transcription import transcribe_files
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.checkpoints.loading import load_ctc_checkpoint
from w2v_jax.cli import align
from w2v_jax.data import default_manifest
from w2v_jax.data.vocabulary import SPECIAL_TOKENS, Vocabulary

pytestmark = pytest.mark.slow
VALID = default_manifest("valid")
CORPUS_LM = VALID.parent / "lm" / "train_3gram.arpa"


@pytest.fixture(scope="module")
def twins(tiny_finetuning, tmp_path_factory):
    """(lower-case folder, upper-case folder): one model, its letters named in either case."""
    model, vocabulary, normalize = load_ctc_checkpoint(tiny_finetuning)
    bias = model.lm_head.bias[...].at[vocabulary.pad_id].add(-1000.0)
    model.lm_head.bias[...] = bias.at[vocabulary.token_to_id[vocabulary.word_delimiter_token]].add(-1.0)
    upper = Vocabulary(tuple(t if t in SPECIAL_TOKENS else t.upper() for t in vocabulary.tokens))
    assert (vocabulary.casing, upper.casing) == ("lower", "upper")
    folder = tmp_path_factory.mktemp("twins")
    for name, tokens in (("lower", vocabulary), ("upper", upper)):
        save_checkpoint(model.config, model, folder / name, vocabulary=tokens, do_normalize=normalize)
    return folder / "lower", folder / "upper"


def test_evaluate_gives_the_twins_the_same_error_rates(twins):
    lower, upper = (evaluate_finetuned_checkpoint(folder, VALID) for folder in twins)
    assert lower == upper
    assert lower["unknown_symbols"] > 0  # valid letters the train text lacks (ô), counted alike


def test_transcripts_differ_only_in_case_greedy_and_with_the_corpus_lm(twins):
    lower, upper = (list(transcribe_files(folder, [VALID])) for folder in twins)
    assert [(f, t.upper()) for f, t in lower] == upper
    assert all(t.strip() for _, t in lower)

    def with_lm(vocabulary):
        options = BeamSearchOptions(lm_weight=0.25, word_score=-1.0)
        return BeamSearchDecoder(vocabulary, CORPUS_LM, lm.lexicon_path(CORPUS_LM), options)

    lower, upper = (list(transcribe_files(folder, [VALID], decoder=with_lm)) for folder in twins)
    assert lower == upper and any(t for _, t in lower)  # lexicon words: the LM's, whatever the model's case


def test_align_gives_the_twins_the_same_alignments(twins, tmp_path, capsys):
    """Through the command (`w2v-align`, the launcher-level check): the same frames and scores,
    tokens in the model's case; the same transcripts refused (letters of the valid text outside the
    vocabulary: ô, ...), named on stderr and counted in the exit status."""
    refused = []
    for name, folder in zip(("lower", "upper"), twins):
        with pytest.raises(SystemExit, match="unreadable files? skipped"):
            run_main(align, [f"--checkpoint={folder}", f"--manifest={VALID}", f"--out={tmp_path / name}"])
        refused.append([line for line in capsys.readouterr().err.splitlines() if "outside the model's" in line])
    assert refused[0] == refused[1] and refused[0]
    lines = [(tmp_path / name / "alignments.jsonl").read_text().splitlines() for name in ("lower", "upper")]
    lower, upper = ([json.loads(line) for line in side] for side in lines)
    assert len(lower) == len(upper) == 30 - len(refused[0])
    for low, up in zip(lower, upper):
        assert [{**s, "token": s["token"].upper()} for s in low["segments"]] == up["segments"]
        assert (low["path"], low["text"]) == (up["path"], up["text"]) and up["segments"]


def test_build_lm_with_either_twins_vocabulary_keeps_every_word(twins, tmp_path):
    lower, upper = (load_ctc_checkpoint(folder)[1] for folder in twins)
    train = default_manifest("train")
    for name, vocabulary in (("lower", lower), ("upper", upper)):
        lm.build_lm([train], tmp_path / f"{name}.arpa", order=3, vocabulary=vocabulary)
    assert (tmp_path / "lower.arpa").read_text() == (tmp_path / "upper.arpa").read_text()
    lines = [lm.lexicon_path(tmp_path / f"{name}.arpa").read_text().splitlines() for name in ("lower", "upper")]
    assert len(lines[0]) == len(lm.lexicon_path(CORPUS_LM).read_text().splitlines())
    assert [f"{w}\t{s.upper()}" for w, s in (line.split("\t") for line in lines[0])] == lines[1]


def test_align_refuses_a_transcript_the_model_cannot_spell():
    upper = Vocabulary.from_symbols("ABC")
    assert timestamps.transcript_ids(list("ab|c|"), upper).tolist() == [5, 6, 4, 7, 4]
    with pytest.raises(ValueError, match=r"the transcript has 2 symbols outside the model's vocabulary: \['x'\]"):
        timestamps.transcript_ids(list("axb|x|"), upper)
    np.testing.assert_array_equal(timestamps.transcript_ids([], upper), np.zeros(0, np.int32))
