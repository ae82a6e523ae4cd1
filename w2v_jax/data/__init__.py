"""Audio input pipeline: manifests, decoding, bucketed resumable batches, the embedded corpus.

- `audio`: decoding and resampling; `manifest`: fairseq's TSV manifests; `shards`,
  `shard_preparation`: a manifest's audio in ArrayRecord shard sets, read wherever a manifest is;
  `labels`, `vocabulary`: transcripts and token ids; `utterances`: utterances with their alignments;
- `planning`: the batch plan (length buckets, token budgets, several corpora); `pipeline`: grain's
  resumable input pipeline over it; `skips`: counted skips of bad input;
- `generated`: a generated LibriSpeech-like corpus; `corpus/`: the embedded espeak-ng corpus.

Importing the room imports none of them: each name below is imported when first read.
"""

from __future__ import annotations

from pathlib import Path

from w2v_jax.lazy_exports import lazy_exports

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


def default_manifest(split: str = "train") -> Path:
    """Manifest of the embedded espeak-ng corpus (train or valid split) inside the package."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    return CORPUS_DIR / f"{split}.tsv"


with lazy_exports(globals()):
    from w2v_jax.data import (
        audio,
        generated,
        labels,
        manifest,
        pipeline,
        planning,
        shard_preparation,
        shards,
        skips,
        utterances,
        vocabulary,
    )
    from w2v_jax.data.audio import SAMPLE_RATE, AudioError, load_audio, read_audio
    from w2v_jax.data.manifest import Manifest, load_manifest, read_manifest, scan_folder, write_manifest
    from w2v_jax.data.pipeline import TrainIterator, bucket_lengths, make_train_iterator
    from w2v_jax.data.skips import BadInputError, TooManySkippedFiles

__all__ = [
    "CORPUS_DIR",
    "SAMPLE_RATE",
    "AudioError",
    "BadInputError",
    "Manifest",
    "TooManySkippedFiles",
    "TrainIterator",
    "audio",
    "bucket_lengths",
    "default_manifest",
    "generated",
    "labels",
    "load_audio",
    "load_manifest",
    "make_train_iterator",
    "manifest",
    "pipeline",
    "planning",
    "read_audio",
    "read_manifest",
    "scan_folder",
    "shard_preparation",
    "shards",
    "skips",
    "utterances",
    "vocabulary",
    "write_manifest",
]
