"""w2v_jax.probing: frame labels, features, linear probes, validation metrics, checkpoint loading."""

import json

import jax
import librosa
import numpy as np
import pytest
import soundfile
from flax import nnx
from hypothesis import given, settings, strategies as st

from w2v_jax import convert, probing
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import write_manifest
from w2v_jax.model import Wav2Vec2ForPreTraining


@pytest.fixture(scope="module")
def model():
    return Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))


def _labels_oracle(phonemes, starts, ends, num_frames):
    out = []
    for t in range(num_frames):
        centre = t * 320 + 200
        hits = [p for p, s, e in zip(phonemes, starts, ends) if s <= centre < e]
        out.append(hits[0] if hits else None)
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 500), st.integers(1, 2000)), min_size=1, max_size=12), st.integers(1, 40))
def test_frame_labels_match_the_centre_sample_oracle(spans, num_frames):
    """Disjoint sorted spans with gaps: each frame gets the phoneme under its centre sample, or None."""
    starts, ends, position = [], [], 0
    for gap, length in spans:
        starts.append(position + gap)
        ends.append(position + gap + length)
        position = ends[-1]
    phonemes = [f"p{i}" for i in range(len(spans))]
    got = probing.frame_phone_labels(phonemes, np.array(starts), np.array(ends), num_frames)
    assert got == _labels_oracle(phonemes, starts, ends, num_frames)


def test_frame_labels_reject_ragged_alignments():
    with pytest.raises(ValueError, match="phonemes"):
        probing.frame_phone_labels(["a", "b"], np.array([0]), np.array([5]), 3)


def test_log_mel_matches_numpy_oracle_on_the_model_frame_grid(model):
    waveform = np.random.RandomState(0).randn(5000).astype(np.float32)
    got = probing.log_mel_features(waveform)
    frames = (5000 - 400) // 320 + 1
    assert got.shape == (frames, 80) == (model.num_frames(5000), 80)
    window = np.hanning(401)[:-1]  # periodic Hann, as librosa's default
    power = np.stack([np.abs(np.fft.rfft(waveform[t * 320 : t * 320 + 400] * window)) ** 2 for t in range(frames)])
    mel = power @ librosa.filters.mel(sr=16000, n_fft=400, n_mels=80).T
    np.testing.assert_allclose(got, np.log(mel + 1e-6), rtol=1e-4, atol=1e-4)


def test_model_features_do_not_depend_on_batching(model):
    """Batched (with a filler row) or alone, an utterance gets the same features."""
    rng = np.random.RandomState(1)
    waveforms = [rng.randn(n).astype(np.float32) for n in (4800, 6400, 4800)]
    together = probing.model_features(model, waveforms, "context", batch_size=2)
    alone = probing.model_features(model, waveforms[:2], "context", batch_size=2)  # [w0, w0-filler], [w1, filler]
    for a, b in zip(together[:2], alone):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for features, w in zip(together, waveforms):
        assert features.shape == (model.num_frames(len(w)), 32)
    projected = probing.model_features(model, waveforms[1:2], "projected", batch_size=2)[0]
    assert projected.shape == (model.num_frames(6400), 16)
    with pytest.raises(ValueError, match="feature kind"):
        probing.model_features(model, waveforms, "hidden")


def test_linear_probe_separates_separable_data_and_not_noise():
    rng = np.random.RandomState(0)
    centres = rng.randn(4, 6) * 4
    y = rng.randint(0, 4, 800)
    x = centres[y] + rng.randn(800, 6) * 0.3
    probe = probing.train_linear_probe(x[:600], y[:600], 4, steps=200)
    assert probing.accuracy(probe, x[600:], y[600:]) == 1.0
    shuffled = rng.permutation(y)
    noise_probe = probing.train_linear_probe(x[:600], shuffled[:600], 4, steps=200)
    assert probing.accuracy(noise_probe, x[600:], shuffled[600:]) < 0.45  # chance is 0.25
    with pytest.raises(ValueError, match="labels"):
        probing.train_linear_probe(x, y + 1, 4)


def test_validation_metrics_are_consistent(model):
    rng = np.random.RandomState(2)
    waveforms = [rng.randn(n).astype(np.float32) for n in (9600, 9600, 9600, 6400)]
    metrics = probing.validation_metrics(model, waveforms, batch_size=3)
    frames = sum(model.num_frames(len(w)) for w in waveforms)
    assert metrics.codebook_usage.shape == (2, 8)
    np.testing.assert_array_equal(metrics.codebook_usage.sum(axis=1), [frames, frames])
    assert metrics.used_fraction == np.mean(metrics.codebook_usage > 0)
    assert 2.0 <= metrics.code_perplexity <= 16.0
    assert 0.0 <= metrics.accuracy <= 1.0 and metrics.chance_accuracy == 0.2
    assert metrics.num_masked > 0 and metrics.skipped_utterances == 0
    assert metrics.num_masked <= frames
    again = probing.validation_metrics(model, waveforms, batch_size=3)
    assert again.loss == metrics.loss  # masks and distractors come from the seed


def test_load_model_reads_our_and_transformers_folders(model, tmp_path):
    convert.save_checkpoint(model.config, model, tmp_path / "ours")
    convert.save_hf_checkpoint(model.config, model, tmp_path / "hf")
    expected = jax.tree.leaves(nnx.state(model, nnx.Param))
    for folder in ("ours", "hf"):
        loaded = probing.load_model(tmp_path / folder)
        for a, b in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)), expected):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="not a checkpoint"):
        probing.load_model(tmp_path)


def make_corpus(folder, languages=("en", "fr"), per_language=3, seconds=1.2):
    """A small corpus like the embedded one: FLACs, a manifest and metadata with alignments."""
    rng = np.random.RandomState(0)
    paths, lengths, records = [], [], []
    for language in languages:
        for i in range(per_language):
            n = int(seconds * 16000) + 800 * i
            path = f"{language}_{i}.flac"
            soundfile.write(folder / path, (rng.randn(n) * 0.1).astype(np.float32), 16000)
            cuts = np.linspace(0, n, 9).astype(int)
            records.append({
                "path": path, "language": language,
                "phonemes": [f"{language}{k % 3}" for k in range(8)],
                "phoneme_starts": cuts[:-1].tolist(), "phoneme_ends": cuts[1:].tolist(),
            })
            paths.append(path)
            lengths.append(n)
    write_manifest(folder / "train.tsv", folder, paths, lengths)
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder / "train.tsv"


def test_load_utterances_and_probe_tables(model, tmp_path):
    manifest = make_corpus(tmp_path)
    utterances = probing.load_utterances(manifest, crop_multiple=3200)
    assert [len(u.waveform) % 3200 for u in utterances] == [0] * 6
    assert {u.language for u in utterances} == {"en", "fr"} and len(utterances[0].phonemes) == 8
    metrics, results = probing.evaluate(model, utterances, utterances, probe_steps=50)
    assert [r.name for r in results] == ["checkpoint (context)", "random init (context)", "log-mel (80)"]
    for r in results:
        assert 0.0 <= r.phone_accuracy <= 1.0 and r.num_phone_classes == 6
    table = probing.probe_table(results)
    assert table.count("\n") == len(results) + 2 and "majority class" in table
    assert metrics.num_masked > 0
