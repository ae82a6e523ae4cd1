"""Decoding, conversion and normalisation of single files (w2v_jax.data.audio)."""

import librosa
import numpy as np
import pytest
import soundfile
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from w2v_jax import feature_encoder
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import audio, skips


def _tone(num_samples: int, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """[num_samples, channels] float32 test signal: a few sines plus noise, different per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / rate
    columns = [
        0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.05 * rng.standard_normal(num_samples) for c in range(channels)
    ]
    return np.stack(columns, axis=1).astype(np.float32)


@pytest.mark.parametrize("rate,channels", [(16_000, 1), (16_000, 2), (44_100, 2), (22_050, 1), (8_000, 3)])
def test_load_matches_librosa(tmp_path, rate, channels):
    path = tmp_path / "x.wav"
    soundfile.write(path, _tone(int(rate * 0.7), rate, channels), rate, subtype="FLOAT")
    decoded = audio.read_audio(path)
    reference, _ = librosa.load(path, sr=audio.SAMPLE_RATE, mono=True, res_type="soxr_hq")
    assert decoded.samples.dtype == np.float32
    assert decoded.resampled == (rate != 16_000)
    assert decoded.downmixed == (channels > 1)
    # librosa zero-pads soxr's output (length rounded to nearest) up to ceil(n * 16000 / rate).
    n = decoded.samples.shape[0]
    assert n == audio.resampled_length(int(rate * 0.7), rate)
    assert reference.shape[0] - n in (0, 1)
    np.testing.assert_array_equal(reference[n:], 0.0)
    np.testing.assert_allclose(decoded.samples, reference[:n], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(audio.load_audio(path, normalize_audio=False), reference[:n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 24_000, 32_000, 44_100, 48_000, 96_000])
def test_resampled_length_is_soxr_length(rate):
    for frames in (401, 403, 405, 1001, 12_345, 99_999):
        expected = soxr.resample(np.zeros(frames, np.float32), rate, audio.SAMPLE_RATE, quality="HQ").shape[0]
        assert audio.resampled_length(frames, rate) == expected


@settings(max_examples=30, deadline=None)
@given(st.integers(400, 5000), st.floats(-3, 3), st.floats(1e-3, 10), st.integers(0, 2**31))
def test_normalize_statistics(length, offset, scale, seed):
    x = (offset + scale * np.random.default_rng(seed).standard_normal(length)).astype(np.float32)
    y = audio.normalize(x)
    x64 = x.astype(np.float64)
    oracle = (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-7)  # transformers' do_normalize formula
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, oracle, rtol=1e-5, atol=1e-6)
    assert abs(float(y.astype(np.float64).mean())) < 1e-5
    np.testing.assert_allclose(y.astype(np.float64).var(), x64.var() / (x64.var() + 1e-7), rtol=1e-5)


def test_normalize_constant_signal_is_zero_not_nan():
    np.testing.assert_array_equal(audio.normalize(np.full(1000, 0.25, np.float32)), np.zeros(1000, np.float32))


def test_load_audio_normalizes_by_default(tmp_path):
    path = tmp_path / "x.flac"
    soundfile.write(path, _tone(8000, 16_000), 16_000)
    raw = audio.load_audio(path, normalize_audio=False)
    np.testing.assert_allclose(audio.load_audio(path), audio.normalize(raw), rtol=1e-6)


def _write_bad(tmp_path, kind: str):
    """One unusable file of each kind; returns (path, expected reason)."""
    path = tmp_path / f"{kind}.wav"
    good = _tone(4000, 16_000)
    if kind == "missing":
        return path, skips.MISSING
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
        return path, skips.UNREADABLE
    if kind == "truncated_flac":
        path = tmp_path / "truncated.flac"
        soundfile.write(path, good, 16_000)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, skips.UNREADABLE
    if kind == "empty":
        soundfile.write(path, np.zeros((0, 1), np.float32), 16_000)
        return path, skips.EMPTY
    if kind == "nan":
        good[100, 0] = np.nan
        soundfile.write(path, good, 16_000, subtype="FLOAT")
        return path, skips.NON_FINITE
    if kind == "inf":
        good[7, 0] = -np.inf
        soundfile.write(path, good, 16_000, subtype="FLOAT")
        return path, skips.NON_FINITE
    if kind == "short":
        soundfile.write(path, good[:399], 16_000)
        return path, skips.SHORTER_THAN_RECEPTIVE_FIELD
    if kind == "short_after_resampling":
        soundfile.write(path, _tone(1000, 44_100), 44_100)  # 363 samples at 16 kHz
        return path, skips.SHORTER_THAN_RECEPTIVE_FIELD
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing", "random_bytes", "truncated_flac", "empty", "nan", "inf", "short", "short_after_resampling"]
)
def test_bad_files_raise_audio_error_with_reason(tmp_path, kind):
    path, reason = _write_bad(tmp_path, kind)
    with pytest.raises(audio.AudioError) as error:
        audio.load_audio(path)
    assert error.value.reason == reason
    assert reason in skips.SKIP_REASONS
    assert str(path) in str(error.value)
    assert isinstance(error.value, ValueError)


def test_receptive_field_matches_feature_encoder():
    assert feature_encoder.receptive_field(feature_encoder.FeatureEncoder.LAYER_CONFIGS) == audio.RECEPTIVE_FIELD
    # The default stack is every preset's: the constant holds wherever no model is at hand.
    for name in Wav2Vec2Config.PRESETS:
        config = Wav2Vec2Config.preset(name)
        assert feature_encoder.receptive_field(zip(config.conv_kernel, config.conv_stride)) == audio.RECEPTIVE_FIELD


def test_containers_libsndfile_does_not_know_go_through_librosa(tmp_path):
    # .m4a / .mp4 / ... are decoded by librosa (here a WAV under an .m4a name, which librosa
    # opens by content): same samples, rate, channel count and mono mix as the soundfile path.
    stereo = _tone(9000, 22_050, 2)
    soundfile.write(tmp_path / "a.wav", stereo, 22_050, subtype="FLOAT")
    (tmp_path / "a.m4a").write_bytes((tmp_path / "a.wav").read_bytes())
    direct, via_librosa = audio.read_audio(tmp_path / "a.wav"), audio.read_audio(tmp_path / "a.m4a")
    assert (via_librosa.source_rate, via_librosa.source_channels) == (22_050, 2)
    np.testing.assert_array_equal(via_librosa.samples, direct.samples)
    assert via_librosa.samples.shape == (audio.resampled_length(9000, 22_050),)
