"""Audio input pipeline: manifests, decoding, bucketed resumable batches, the embedded corpus."""

from __future__ import annotations

from pathlib import Path

from w2v_jax.data.audio import SAMPLE_RATE, AudioError, load_audio, read_audio
from w2v_jax.data.manifest import Manifest, load_manifest, read_manifest, scan_folder, write_manifest
from w2v_jax.data.pipeline import TrainIterator, bucket_lengths, make_train_iterator
from w2v_jax.data.skips import BadInputError, TooManySkippedFiles

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


def default_manifest(split: str = "train") -> Path:
    """Manifest of the embedded espeak-ng corpus (train or valid split) inside the package."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    return CORPUS_DIR / f"{split}.tsv"


__all__ = [
    "CORPUS_DIR",
    "SAMPLE_RATE",
    "AudioError",
    "BadInputError",
    "Manifest",
    "TooManySkippedFiles",
    "TrainIterator",
    "bucket_lengths",
    "default_manifest",
    "load_audio",
    "load_manifest",
    "make_train_iterator",
    "read_audio",
    "read_manifest",
    "scan_folder",
    "write_manifest",
]
