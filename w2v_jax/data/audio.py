"""Decoding one audio file into the model's input format: float32, 16 kHz, mono.

soundfile (libsndfile) is the fast path for WAV/FLAC/OGG/MP3 and friends; librosa (audioread/ffmpeg)
is only tried for containers libsndfile does not know (m4a, aac, wma...). Multi-channel audio is
averaged to mono (as ``librosa.to_mono``), then resampled with soxr's high-quality mode (librosa's
default ``res_type="soxr_hq"``), so ``load_audio`` matches ``librosa.load(path, sr=16000)``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import warnings
from pathlib import Path

import librosa
import numpy as np
import soundfile
import soxr

from w2v_jax.data import skips

SAMPLE_RATE = 16_000
# Samples one output frame of wav2vec 2.0's conv stack sees: the constant for code without a model at
# hand (a model's own follows from its layers, `FeatureEncoder.receptive_field`). Shorter inputs make
# the first convolution fail, so they are rejected here, before any model code.
RECEPTIVE_FIELD = 400
NORMALIZE_EPS = 1e-7

# Extensions scanned in folders. The ones libsndfile cannot open go through librosa's audioread path.
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".aiff",
        ".aif",
        ".au",
        ".caf",
        ".w64",
        ".m4a",
        ".aac",
        ".wma",
        ".webm",
        ".mp4",
    }
)
_LIBROSA_ONLY_EXTENSIONS = frozenset({".m4a", ".aac", ".wma", ".webm", ".mp4"})


class AudioError(ValueError):
    """A file that cannot be used as model input; ``reason`` is one of the skip reasons in ``skips``."""

    def __init__(self, reason: str, path: str | os.PathLike, detail: str):
        super().__init__(f"{path}: {reason} ({detail})")
        self.reason = reason
        self.path = str(path)
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class DecodedAudio:
    """A decoded file converted to the model's format.

    samples: float32 [num_samples] at 16 kHz, mono, not normalised.
    source_rate / source_channels / source_frames: what the file held (frames at its own rate), so
    callers can count conversions and accept lengths written at the file's rate.
    """

    samples: np.ndarray
    source_rate: int
    source_channels: int
    source_frames: int

    @property
    def resampled(self) -> bool:
        return self.source_rate != SAMPLE_RATE

    @property
    def downmixed(self) -> bool:
        return self.source_channels > 1


def resampled_length(num_frames: int, sample_rate: int) -> int:
    """Number of 16 kHz samples soxr produces from ``num_frames`` at ``sample_rate``.

    soxr rounds the exact length num_frames * 16000 / sample_rate to nearest, halves up; integer
    arithmetic keeps that exact for any length.
    """
    return int((2 * num_frames * SAMPLE_RATE + sample_rate) // (2 * sample_rate))


def _decode(source: Path | io.BytesIO, suffix: str, name: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Returns ([frames, channels] float32, sample_rate) of a file or of its bytes (``suffix``: the
    file's extension, ``name``: the path for messages); raises AudioError("unreadable") on any failure."""
    try:
        if suffix.lower() in _LIBROSA_ONLY_EXTENSIONS:
            if isinstance(source, io.BytesIO):
                # audioread decodes files only: the bytes go through a temporary file of the same kind.
                with tempfile.NamedTemporaryFile(suffix=suffix) as file:
                    file.write(source.getvalue())
                    file.flush()
                    return _decode(Path(file.name), suffix, name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # librosa warns about its audioread fallback
                data, rate = librosa.load(source, sr=None, mono=False, dtype=np.float32)
            return np.atleast_2d(data).T, int(rate)  # librosa is [channels, frames]
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
        return data, int(rate)
    # Decoders fed arbitrary bytes raise many exception types (LibsndfileError, audioread's
    # NoBackendError, EOFError, struct errors...): any of them means this file is unusable.
    except Exception as error:
        raise AudioError(skips.UNREADABLE, name, f"{type(error).__name__}: {error}") from error


def _to_model_format(data: np.ndarray, rate: int, name: str | os.PathLike) -> DecodedAudio:
    """[frames, channels] decoded at ``rate`` -> 16 kHz mono; AudioError for empty, non-finite or too
    short audio (``name`` in the message)."""
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(skips.EMPTY, name, "the file holds no samples")
    if not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise AudioError(skips.NON_FINITE, name, f"{bad} NaN/Inf samples")
    channels = data.shape[1]
    mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    if mono.shape[0] < RECEPTIVE_FIELD:
        raise AudioError(
            skips.SHORTER_THAN_RECEPTIVE_FIELD,
            name,
            f"{mono.shape[0]} samples at 16 kHz < the encoder's {RECEPTIVE_FIELD}-sample receptive field",
        )
    return DecodedAudio(np.ascontiguousarray(mono), rate, channels, data.shape[0])


def read_audio(path: str | os.PathLike) -> DecodedAudio:
    """Decodes ``path`` and converts it to 16 kHz mono float32.

    Raises AudioError with reason "missing", "unreadable", "empty", "non_finite" or
    "shorter_than_receptive_field" (fewer than RECEPTIVE_FIELD samples at 16 kHz).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(skips.MISSING, path, "no such file")
    if path.stat().st_size == 0:
        raise AudioError(skips.EMPTY, path, "the file has 0 bytes")
    return _to_model_format(*_decode(path, path.suffix, path), path)


def decode_audio_bytes(data: bytes, suffix: str, name: str) -> DecodedAudio:
    """``read_audio`` of a file's bytes (e.g. kept in a shard): ``suffix`` is the file's extension
    (``.flac``), ``name`` what messages call it. The same result and errors as reading the file."""
    if not data:
        raise AudioError(skips.EMPTY, name, "the file has 0 bytes")
    return _to_model_format(*_decode(io.BytesIO(data), suffix, name), name)


def normalize(samples: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance: (x - mean) / sqrt(var + 1e-7), as transformers' ``do_normalize``.

    samples: [num_samples] unpadded audio. Statistics are accumulated in float64 (long utterances
    lose precision in float32 sums); the result is float32.
    """
    x = samples.astype(np.float64)
    return ((x - x.mean()) / np.sqrt(x.var() + NORMALIZE_EPS)).astype(np.float32)


def load_audio(path: str | os.PathLike, *, normalize_audio: bool = True) -> np.ndarray:
    """Loads one file the way the training pipeline does: float32 [num_samples], 16 kHz, mono.

    normalize_audio: apply the per-utterance normalisation (the pipeline's default). Raises
    AudioError (a ValueError) naming the path and reason when the file is unusable.
    """
    samples = read_audio(path).samples
    return normalize(samples) if normalize_audio else samples
