"""A generated corpus with LibriSpeech's utterance lengths, for measuring batching and input throughput.

`librispeech_like_seconds` draws utterance lengths from a mixture that matches the published shape of
LibriSpeech train-960 (mean about 12.3 s, most utterances between 2 and 17 s, a peak near 14-16 s
where the corpus's segmentation cut long chapters, a thin tail to about 35 s):

- 60%: normal, mean 14.5 s, sd 1.5 s (the segmentation peak);
- 35%: uniform 1.5-13 s (short segments and chapter ends);
- 5%: uniform 17-32 s (the long tail), everything clipped to [1, 35] s.

`write_librispeech_like_corpus` writes `num_files` FLAC files of such lengths (a tone with noise,
16 kHz unless asked otherwise) and a manifest of `num_rows` rows drawn from them with replacement, each
row stating its file's true length, so thousands of rows cost the disk of a few hundred files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile

from w2v_jax.data import audio
from w2v_jax.data.manifest import write_manifest

MANIFEST_NAME = "train.tsv"
MAX_SECONDS = 35.0


def librispeech_like_seconds(count: int, seed: int = 0) -> np.ndarray:
    """float64 [count] utterance lengths in seconds (module docstring's mixture)."""
    rng = np.random.default_rng([seed, 0])
    kind = rng.choice(3, size=count, p=[0.60, 0.35, 0.05])
    seconds = np.select(
        [kind == 0, kind == 1],
        [rng.normal(14.5, 1.5, count), rng.uniform(1.5, 13.0, count)],
        rng.uniform(17.0, 32.0, count),
    )
    return np.clip(seconds, 1.0, MAX_SECONDS)


def write_librispeech_like_corpus(
    folder: str | os.PathLike,
    *,
    num_rows: int = 5000,
    num_files: int = 200,
    seed: int = 0,
    sample_rate: int = audio.SAMPLE_RATE,
) -> Path:
    """Writes the corpus (module docstring) into `folder`; returns its manifest (`folder/train.tsv`).

    Rows state each file's frame count at `sample_rate` (at 16 kHz, the pipeline's own lengths).
    """
    if num_files < 1 or num_rows < 1:
        raise ValueError(f"need num_files >= 1 and num_rows >= 1, got {num_files}, {num_rows}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    frames = np.round(librispeech_like_seconds(num_files, seed) * sample_rate).astype(np.int64)
    names = [f"utt{i:05d}.flac" for i in range(num_files)]
    for name, count in zip(names, frames.tolist()):
        time = np.arange(count) / sample_rate
        signal = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 1000) * time) + 0.01 * rng.standard_normal(count)
        soundfile.write(folder / name, signal.astype(np.float32), sample_rate, subtype="PCM_16")
    rows = rng.integers(0, num_files, num_rows)
    manifest = folder / MANIFEST_NAME
    write_manifest(manifest, ".", [names[i] for i in rows], frames[rows].tolist())
    return manifest


def librispeech_like_manifest(folder: str | os.PathLike, **kwargs) -> Path:
    """The manifest of the corpus in `folder`, written first (`write_librispeech_like_corpus(folder,
    **kwargs)`) unless it is there."""
    manifest = Path(folder) / MANIFEST_NAME
    return manifest if manifest.is_file() else write_librispeech_like_corpus(folder, **kwargs)
