"""w2v_jax.research.probes: log-mel and model features, linear probes, the evaluation."""

import librosa
import numpy as np
import pytest
from flax import nnx
from small_corpus import make_corpus

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.utterances import load_utterances
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.research import probes


@pytest.fixture(scope="module")
def model():
    return Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))


def test_log_mel_matches_numpy_oracle_on_the_model_frame_grid(model):
    waveform = np.random.RandomState(0).randn(5000).astype(np.float32)
    got = probes.log_mel_features(waveform)
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
    together = probes.model_features(model, waveforms, "context", batch_size=2)
    alone = probes.model_features(model, waveforms[:2], "context", batch_size=2)  # [w0, w0-filler], [w1, filler]
    for a, b in zip(together[:2], alone):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for features, w in zip(together, waveforms):
        assert features.shape == (model.num_frames(len(w)), 32)
    projected = probes.model_features(model, waveforms[1:2], "projected", batch_size=2)[0]
    assert projected.shape == (model.num_frames(6400), 16)
    with pytest.raises(ValueError, match="feature kind"):
        probes.model_features(model, waveforms, "hidden")


def test_linear_probe_separates_separable_data_and_not_noise():
    rng = np.random.RandomState(0)
    centres = rng.randn(4, 6) * 4
    y = rng.randint(0, 4, 800)
    x = centres[y] + rng.randn(800, 6) * 0.3
    probe = probes.train_linear_probe(x[:600], y[:600], 4, steps=200)
    assert probes.accuracy(probe, x[600:], y[600:]) == 1.0
    shuffled = rng.permutation(y)
    noise_probe = probes.train_linear_probe(x[:600], shuffled[:600], 4, steps=200)
    assert probes.accuracy(noise_probe, x[600:], shuffled[600:]) < 0.45  # chance is 0.25
    with pytest.raises(ValueError, match="labels"):
        probes.train_linear_probe(x, y + 1, 4)


def test_load_utterances_and_probe_tables(model, tmp_path):
    manifest = make_corpus(tmp_path)
    utterances = load_utterances(manifest, crop_multiple=3200)
    assert [len(u.waveform) % 3200 for u in utterances] == [0] * 6
    assert {u.language for u in utterances} == {"en", "fr"} and len(utterances[0].phonemes) == 8
    metrics, results = probes.evaluate(model, utterances, utterances, probe_steps=50)
    assert [r.name for r in results] == ["checkpoint (context)", "random init (context)", "log-mel (80)"]
    for r in results:
        assert 0.0 <= r.phone_accuracy <= 1.0 and r.num_phone_classes == 6
    table = probes.probe_table(results)
    assert table.count("\n") == len(results) + 2 and "majority class" in table
    assert metrics.num_masked > 0
