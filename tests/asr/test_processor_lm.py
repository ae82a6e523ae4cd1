"""jax-to-hf --lm (transformers' Wav2Vec2ProcessorWithLM files) and hf-to-jax's import of them."""

import json
import math

import numpy as np
import pytest
import transformers
from flax import nnx

from tests.support.launchers import run_main
from w2v_jax.asr import lm
from w2v_jax.asr.beam_search import BeamSearchDecoder, BeamSearchOptions
from w2v_jax.asr.processor_lm import alphabet_labels
from w2v_jax.asr.transcription import model_forward
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.checkpoints.hf import load_vocabulary
from w2v_jax.cli import convert_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import default_manifest
from w2v_jax.data.audio import load_audio
from w2v_jax.data.labels import build_vocabulary
from w2v_jax.data.manifest import read_manifest
from w2v_jax.model import Wav2Vec2ForCTC

VOCABULARY = build_vocabulary(default_manifest("train"), "ltr")
CORPUS_LM = default_manifest("train").parent / "lm" / "train_3gram.arpa"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random tiny CTC model in our folder format, exported with the corpus LM."""
    root = tmp_path_factory.mktemp("processor_lm")
    config = Wav2Vec2Config.preset("tiny", vocab_size=len(VOCABULARY))
    model = Wav2Vec2ForCTC(config, rngs=nnx.Rngs(3))
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 100  # frame argmaxes that vary
    save_checkpoint(config, model, root / "ours", vocabulary=VOCABULARY)
    argv = ["jax-to-hf", str(root / "ours"), str(root / "hf"), f"--lm={CORPUS_LM}", "--lm_weight=1.5"]
    run_main(convert_checkpoint, ["--word_score=0.5", *argv])
    return root, model


def test_export_writes_pyctcdecodes_files(exported):
    root, _ = exported
    alphabet = json.loads((root / "hf" / "alphabet.json").read_text())
    assert alphabet == {"labels": alphabet_labels(VOCABULARY), "is_bpe": False}
    assert alphabet["labels"][:5] == ["", "<s>", "</s>", "\u2047", " "]
    lm_dir = root / "hf" / "language_model"
    assert (lm_dir / "train_3gram.arpa").read_text() == CORPUS_LM.read_text()
    attrs = json.loads((lm_dir / "attrs.json").read_text())
    assert attrs["alpha"] == pytest.approx(1.5 / math.log(10)) and attrs["beta"] == 0.5
    words = (lm_dir / "unigrams.txt").read_text().split()
    assert set(words) == {w for s in lm.read_sentences([default_manifest("train")]) for w in s}


def test_transformers_pipeline_decodes_with_the_exported_lm(exported):
    """Wav2Vec2ProcessorWithLM loads the folder and the ASR pipeline decodes with its LM: the text of
    pyctcdecode's beam search on our model's logits. (pyctcdecode 0.5 pins numpy<2, so it is not in
    the test extra: installed by hand, `pip install --no-deps pyctcdecode kenlm`, this runs.)"""
    # Outside the declared test dependencies (numpy<2), so the only skip of this module.
    pytest.importorskip("pyctcdecode", reason="pyctcdecode pins numpy<2: install it by hand to run this")
    pytest.importorskip("kenlm", reason="kenlm (pyctcdecode's scorer) compiles from source: install it by hand")
    root, model = exported
    processor = transformers.Wav2Vec2ProcessorWithLM.from_pretrained(root / "hf")
    assert processor.decoder.model_container[processor.decoder._model_key].alpha == pytest.approx(1.5 / math.log(10))
    asr = transformers.pipeline("automatic-speech-recognition", model=str(root / "hf"), device="cpu")
    assert asr.type == "ctc_with_lm"
    manifest = read_manifest(default_manifest("valid"))
    for index in range(2):
        path = manifest.file_path(index)
        logits = np.asarray(model_forward(model)(load_audio(path)[None], None))[0]
        expected = processor.decode(logits).text
        assert asr({"raw": load_audio(path, normalize_audio=False), "sampling_rate": 16_000})["text"] == expected


def test_hf_to_jax_imports_the_lm_for_our_beam_search(exported, tmp_path):
    root, _ = exported
    run_main(convert_checkpoint, ["hf-to-jax", str(root / "hf"), str(tmp_path / "back")])
    lm_dir = tmp_path / "back" / "language_model"
    settings = json.loads((lm_dir / "decoder.json").read_text())
    assert settings["lm_weight"] == pytest.approx(1.5) and settings["word_score"] == pytest.approx(0.5)
    vocabulary = load_vocabulary(tmp_path / "back")
    lexicon = lm.read_lexicon(lm_dir / "lexicon.txt", vocabulary)
    assert "the" in lexicon and lexicon["the"] == [["t", "h", "e", "|"]]
    options = BeamSearchOptions(lm_weight=settings["lm_weight"], word_score=settings["word_score"])
    decoder = BeamSearchDecoder(vocabulary, lm_dir / settings["lm"], lm_dir / "lexicon.txt", options)
    words = set(lexicon)
    text = decoder.decode(np.random.default_rng(0).normal(size=(60, len(vocabulary)))).text
    assert text and set(text.split()) <= words


def test_export_refuses_what_pyctcdecode_cannot_read(exported, tmp_path):
    root, _ = exported
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n")
    with pytest.raises(SystemExit, match="lm.bin: export needs the ARPA file"):
        run_main(convert_checkpoint, ["jax-to-hf", str(root / "ours"), str(tmp_path / "hf"), f"--lm={binary}"])
    with pytest.raises(SystemExit, match="--lm applies to jax-to-hf"):
        run_main(convert_checkpoint, ["hf-to-jax", str(root / "hf"), str(tmp_path / "x"), f"--lm={CORPUS_LM}"])
