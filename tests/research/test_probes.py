"""w2v_jax.research.probes: log-mel and model features, linear probes, the evaluation."""

import librosa
import numpy as np
import pytest
from flax import nnx
from small_corpus import make_corpus

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.utterances import Utterance, load_utterances
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
    assert all(r.num_phone_classes == 6 for r in results)
    table = probes.probe_table(results)
    assert table.count("\n") == len(results) + 2 and "majority class" in table
    assert metrics.num_masked > 0


def _aligned_utterances(seed, languages=("en", "fr", "de"), per_language=4):
    """Utterances of 8 phonemes x 640 samples (2 frames each) and, per utterance, features whose
    frame t encodes the phoneme under its centre sample (t * 320 + 200) and the language."""
    rng = np.random.RandomState(seed)
    phonemes = [f"p{k}" for k in range(5)]
    utterances, features = [], []
    for li, language in enumerate(languages):
        for _ in range(per_language):
            labels = rng.randint(0, 5, 8)
            starts = np.arange(8) * 640
            utterances.append(
                Utterance(
                    path="x", waveform=np.zeros(8 * 640, np.float32), language=language,
                    phonemes=tuple(phonemes[k] for k in labels), phoneme_starts=starts, phoneme_ends=starts + 640,
                )
            )
            frames = (8 * 640 - 400) // 320 + 1
            under = labels[(np.arange(frames) * 320 + 200) // 640]
            feats = 0.3 * rng.randn(frames, 9)
            feats[np.arange(frames), under] += 3.0
            feats[:, 5 + li] += 3.0
            features.append(feats)
    return utterances, features


def test_probes_find_the_answer_where_it_is_known():
    # Features that encode the phoneme of each frame and the language: both probes are perfect;
    # shuffled across frames, the phone probe is back near the majority class.
    train, test = _aligned_utterances(0), _aligned_utterances(1)
    result = probes.probe_features("known", train, test, steps=200)
    assert result.phone_accuracy == 1.0 and result.language_accuracy == 1.0
    assert result.num_phone_classes == 5 and result.num_phone_frames == 12 * 15
    assert result.language_majority == pytest.approx(1 / 3)  # 4 test utterances per language
    rng = np.random.RandomState(2)
    scrambled = [f[rng.permutation(len(f))] for f in train[1]]
    noise = probes.probe_features("scrambled", (train[0], scrambled), test, steps=200)
    assert noise.phone_accuracy < 0.5, noise.phone_accuracy  # 5 classes: ~0.2-0.3
