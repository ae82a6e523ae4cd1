"""CTC checkpoints with transformers: weights and vocabulary both ways, processor files, the ASR pipeline."""

import json

import numpy as np
import pytest
import transformers
from flax import nnx

from tests.support.launchers import run_main
from w2v_jax.asr.transcription import transcribe
from w2v_jax.checkpoints.folder import load_checkpoint, save_checkpoint
from w2v_jax.checkpoints.hf import (
    load_hf_checkpoint,
    load_vocabulary,
    params_to_hf,
    save_hf_checkpoint,
    save_processor_files,
)
from w2v_jax.cli import convert_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import default_manifest
from w2v_jax.data.audio import load_audio
from w2v_jax.data.labels import build_vocabulary
from w2v_jax.data.manifest import read_manifest
from w2v_jax.model import Wav2Vec2ForCTC

VOCABULARY = build_vocabulary(default_manifest("train"), "ltr")


def _config(norm: str) -> Wav2Vec2Config:
    layer = norm == "layer"
    return Wav2Vec2Config.preset(
        "tiny", vocab_size=len(VOCABULARY), feat_extract_norm=norm, conv_bias=layer, do_stable_layer_norm=layer
    )


def _model(config: Wav2Vec2Config) -> Wav2Vec2ForCTC:
    model = Wav2Vec2ForCTC(config, rngs=nnx.Rngs(2))
    # A random head: larger logits than transformers' N(0, 0.02) init, so the argmax varies by frame.
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 100
    return model


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_export_loads_in_transformers_and_its_pipeline_gives_our_transcripts(norm, tmp_path):
    config = _config(norm)
    model = _model(config)
    save_hf_checkpoint(config, model, tmp_path, vocabulary=VOCABULARY)
    reference, info = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    processor = transformers.Wav2Vec2Processor.from_pretrained(tmp_path)
    assert processor.tokenizer.get_vocab() == VOCABULARY.token_to_id
    assert processor.feature_extractor.return_attention_mask == (norm == "layer")

    asr = transformers.pipeline("automatic-speech-recognition", model=str(tmp_path), device="cpu")
    manifest = read_manifest(default_manifest("valid"))
    paths = [manifest.file_path(index) for index in range(3)]
    # Our transcripts: the model's greedy decoding, each utterance as if alone (`transcribe` is exact).
    texts = transcribe(model, [load_audio(path) for path in paths], VOCABULARY)
    for path, text in zip(paths, texts):
        raw = load_audio(path, normalize_audio=False)
        assert len(set(text)) > 3  # not a degenerate all-blank transcript
        assert asr({"raw": raw, "sampling_rate": 16_000})["text"] == text


def test_transformers_folder_with_vocabulary_round_trips_through_the_converter(tmp_path):
    config = _config("layer")
    model = _model(config)
    save_hf_checkpoint(config, model, tmp_path / "hf", vocabulary=VOCABULARY)
    run_main(convert_checkpoint, ["hf-to-jax", str(tmp_path / "hf"), str(tmp_path / "ours")])
    loaded_config, loaded = load_checkpoint(tmp_path / "ours")
    assert loaded_config == config and isinstance(loaded, Wav2Vec2ForCTC)
    assert load_vocabulary(tmp_path / "ours") == VOCABULARY
    run_main(convert_checkpoint, ["jax-to-hf", str(tmp_path / "ours"), str(tmp_path / "back")])
    _, back = load_hf_checkpoint(tmp_path / "back")
    expected, got = params_to_hf(nnx.state(model, nnx.Param)), params_to_hf(nnx.state(back, nnx.Param))
    assert expected.keys() == got.keys() and "lm_head.weight" in got
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert load_vocabulary(tmp_path / "back") == VOCABULARY


def test_imported_vocabulary_keeps_the_tokenizers_special_tokens(tmp_path):
    """A transformers vocabulary with other ids and token names (blank "[PAD]" at id 2) loads as is."""
    tokens = ["a", "b", "[PAD]", "[UNK]", "|", "c"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]", "unk_token": "[UNK]"}))
    vocabulary = load_vocabulary(tmp_path)
    assert vocabulary.tokens == tuple(tokens) and vocabulary.pad_id == 2 and vocabulary.unk_id == 3
    assert vocabulary.decode([0, 0, 2, 0, 4, 9, 5]) == transformers.Wav2Vec2CTCTokenizer(
        str(tmp_path / "vocab.json"), pad_token="[PAD]", unk_token="[UNK]"
    ).decode([0, 0, 2, 0, 4, 9, 5])
    assert load_vocabulary(tmp_path / "missing") is None


def test_processor_files_must_match_the_head(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        save_processor_files(VOCABULARY, Wav2Vec2Config.preset("tiny"), tmp_path)
    with pytest.raises(ValueError, match="pad_token_id"):
        save_processor_files(VOCABULARY, _config("group").replace(pad_token_id=1), tmp_path)


def test_our_folder_keeps_the_vocabulary(tmp_path):
    config = _config("group")
    save_checkpoint(config, _model(config), tmp_path, vocabulary=VOCABULARY)
    assert load_vocabulary(tmp_path) == VOCABULARY
    assert isinstance(load_checkpoint(tmp_path)[1], Wav2Vec2ForCTC)
