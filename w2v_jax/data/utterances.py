"""Utterances of a manifest with their metadata: language and phoneme alignments.

The embedded corpus (and any corpus with a `metadata.jsonl` beside its manifest) records each
utterance's language, voice and espeak-ng's phoneme spans; `load_utterances` joins them to the audio,
`frame_phone_labels` puts the phonemes on the conv stack's frame grid, and `equal_length_batches`
groups waveforms of equal length so a model compiles one forward pass per length.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from w2v_jax.data.audio import RECEPTIVE_FIELD, SAMPLE_RATE, load_audio
from w2v_jax.data.manifest import load_manifest
from w2v_jax.json_files import read_json_lines

# Frame grid of the standard conv stack: a frame every 320 samples over its receptive field
# (`audio.RECEPTIVE_FIELD` samples).
FRAME_HOP = 320


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One utterance of a manifest with its metadata.

    Attributes:
      path: the path as written in the manifest (the metadata key).
      waveform: float32 `[samples]`, normalised as the training pipeline does, cropped.
      language: the metadata's language, or None.
      phonemes, phoneme_starts, phoneme_ends: alignment (sample spans at 16 kHz), or empty.
      voice: the metadata's voice (espeak-ng's `language+variant`, e.g. "fr+m3"), or None.
    """

    path: str
    waveform: np.ndarray
    language: str | None
    phonemes: tuple[str, ...]
    phoneme_starts: np.ndarray
    phoneme_ends: np.ndarray
    voice: str | None = None

    @property
    def speaker(self) -> str | None:
        """The voice's variant ("m3" of "fr+m3"): the same synthetic speaker in every language
        (a voice without a variant is its own speaker); None without a voice."""
        if self.voice is None:
            return None
        return self.voice.rpartition("+")[2]


def read_metadata(path: str | os.PathLike) -> dict[str, dict]:
    """A corpus' `metadata.jsonl` keyed by each record's manifest path."""
    return {record["path"]: record for record in read_json_lines(path, expect=dict)}


def load_utterances(
    manifest: str | os.PathLike,
    metadata: Mapping[str, dict] | None = None,
    *,
    crop_multiple: int = SAMPLE_RATE,
    max_utterances: int | None = None,
) -> list[Utterance]:
    """Loads a manifest's audio (normalised like training) and joins its metadata.

    Args:
      manifest: a TSV manifest or a folder.
      metadata: `read_metadata`'s dict; None: `metadata.jsonl` beside the manifest if it exists.
      crop_multiple: each waveform is cropped to a multiple of this many samples (at least the
        receptive field; default one second).
      max_utterances: keep the first N (quick runs).

    Returns:
      the utterances, in manifest order; those shorter than `crop_multiple` are left out.
    """
    if crop_multiple < RECEPTIVE_FIELD:
        raise ValueError(
            f"crop_multiple must be at least the {RECEPTIVE_FIELD}-sample receptive field, got {crop_multiple}"
        )
    entries = load_manifest(manifest)
    if metadata is None:
        beside = pathlib.Path(manifest).parent / "metadata.jsonl"
        metadata = read_metadata(beside) if beside.is_file() else {}
    out: list[Utterance] = []
    for index in range(len(entries)):
        if max_utterances is not None and len(out) >= max_utterances:
            break
        path = entries.paths[index]
        waveform = load_audio(entries.file_path(index))
        keep = len(waveform) // crop_multiple * crop_multiple
        if keep == 0:
            continue
        record = metadata.get(path, {})
        out.append(
            Utterance(
                path=path,
                waveform=waveform[:keep],
                language=record.get("language"),
                phonemes=tuple(record.get("phonemes", ())),
                phoneme_starts=np.asarray(record.get("phoneme_starts", ()), np.int64),
                phoneme_ends=np.asarray(record.get("phoneme_ends", ()), np.int64),
                voice=record.get("voice"),
            )
        )
    return out


def frame_phone_labels(
    phonemes: Sequence[str],
    starts: np.ndarray,
    ends: np.ndarray,
    num_frames: int,
    hop: int = FRAME_HOP,
    window: int = RECEPTIVE_FIELD,
) -> list[str | None]:
    """The phoneme under the centre sample of each frame (None where no phoneme span covers it).

    Frame t covers samples [t * hop, t * hop + window); its label is the phoneme whose span
    [start, end) holds sample t * hop + window // 2.
    """
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    if not len(phonemes) == len(starts) == len(ends):
        raise ValueError(f"{len(phonemes)} phonemes but {len(starts)} starts and {len(ends)} ends")
    centres = np.arange(num_frames) * hop + window // 2
    # Spans are sorted and disjoint: the candidate is the last span starting at or before the centre.
    candidate = np.searchsorted(starts, centres, side="right") - 1
    labels: list[str | None] = []
    for centre, index in zip(centres.tolist(), candidate.tolist()):
        inside = index >= 0 and centre < ends[index]
        labels.append(phonemes[index] if inside else None)
    return labels


def equal_length_batches(waveforms: Sequence[np.ndarray], batch_size: int) -> list[tuple[list[int], np.ndarray]]:
    """Batches of equal-length waveforms, always `batch_size` rows (one compile per length).

    Returns (indices of the real rows, `[batch_size, samples]` array); a short last batch is
    filled with copies of its first row, whose results the callers drop.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[int, list[int]] = {}
    for index, waveform in enumerate(waveforms):
        groups.setdefault(len(waveform), []).append(index)
    out = []
    for indices in groups.values():
        for begin in range(0, len(indices), batch_size):
            chunk = indices[begin : begin + batch_size]
            rows = chunk + [chunk[0]] * (batch_size - len(chunk))
            out.append((chunk, np.stack([waveforms[i] for i in rows]).astype(np.float32)))
    return out
