"""Shard sets: a manifest's audio in ArrayRecord files, read by random access through grain.

A shard set is a folder (written by `shard_preparation.prepare_shards`):

- ``shards.json``, the descriptor: the format, the manifest it came from, each shard's file name,
  rows, bytes and SHA-256, the checksum of the set (SHA-256 over the shards' digests in order), the
  label extensions it holds and the skipped rows per reason;
- ``index.tsv``, one line per manifest row, in the manifest's order:
  ``id<TAB>num_samples<TAB>samples_16k<TAB>skip``: the manifest's path and length as written, the
  length at 16 kHz the batch plan uses, and for a row whose file was unusable at preparation its
  skip reason and detail (``reason: detail``; empty for a usable row);
- ``index.<ext>`` for each label extension (``wrd``, ``ltr``, ``phn``): the manifest's label file,
  so fine-tuning finds its transcripts beside ``index.tsv`` as beside any manifest;
- ``shard-NNNNN.array_record``: one record per manifest row, in order (row i of the set is record i
  of the shards taken one after another).

A record is a 4-byte little-endian header length, a UTF-8 JSON header (``id``, ``num_samples``,
``suffix``, ``labels``: {extension: line}, and ``skip``: [reason, detail] for an unusable row) and
the file's bytes exactly as stored (FLAC, WAV...; nothing re-encoded; none for an unusable row).

A config names a shard set by its folder or its ``shards.json`` wherever it names a manifest:
`manifest.load_manifest` returns a `Manifest` of the set's rows (the manifest's paths and lengths,
so the same fingerprint and the same batch plan) whose `Manifest.read` decodes the record's bytes.
Opening checks every shard's size against the descriptor (cheap); `verify_shard_set` hashes them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from w2v_jax.data import audio
from w2v_jax.json_files import loads, read_json

FORMAT = "w2v_jax.shards/1"
DESCRIPTOR = "shards.json"
INDEX = "index.tsv"
# The records are read one at a time, in any order: one record per chunk, and the audio is already
# compressed (FLAC) or not worth compressing for random access (WAV).
WRITER_OPTIONS = "group_size:1,uncompressed"
_HEADER_LENGTH = struct.Struct("<I")


def descriptor_path(path: str | os.PathLike) -> Path | None:
    """The ``shards.json`` a path names (the set's folder or the file itself); None for anything else."""
    path = Path(path)
    if path.is_dir() and (path / DESCRIPTOR).is_file():
        return path / DESCRIPTOR
    if path.name == DESCRIPTOR and path.is_file():
        return path
    return None


def index_path(path: str | os.PathLike) -> Path | None:
    """The ``index.tsv`` of the shard set a path names (label files sit beside it); None otherwise."""
    descriptor = descriptor_path(path)
    return None if descriptor is None else descriptor.parent / INDEX


def encode_record(header: Mapping[str, Any], data: bytes = b"") -> bytes:
    """One record: the header's JSON behind its length, then ``data`` (the file's bytes)."""
    encoded = json.dumps(header, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return _HEADER_LENGTH.pack(len(encoded)) + encoded + data


def decode_record(record: bytes, source: str = "a shard record") -> tuple[dict[str, Any], bytes]:
    """(header, file bytes) of one record; a ValueError for a record that is not one of ours
    (`source` names the record in it)."""
    if len(record) < _HEADER_LENGTH.size:
        raise ValueError(f"{source} of {len(record)} bytes has no header")
    (length,) = _HEADER_LENGTH.unpack_from(record)
    end = _HEADER_LENGTH.size + length
    if end > len(record):
        raise ValueError(f"{source}'s header claims {length} bytes, the record holds {len(record)}")
    return loads(record[_HEADER_LENGTH.size : end], f"{source}'s header", expect=dict), record[end:]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def set_checksum(digests: Sequence[str]) -> str:
    """The checksum of a shard set: SHA-256 over its shards' SHA-256 digests, in order."""
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class ShardRows:
    """Where a shard-backed manifest's rows are: row i is record i of ``files`` one after another.

    files: absolute shard paths; lengths_16k: int64 [rows] the plan's lengths; skipped: row ->
    (skip reason, detail) for rows unusable at preparation (their records hold no audio).
    """

    files: tuple[str, ...]
    lengths_16k: np.ndarray
    skipped: Mapping[int, tuple[str, str]]

    @functools.cached_property
    def _source(self) -> grain.sources.ArrayRecordDataSource:
        # Opened on first read in each process: grain's workers receive the rows unopened.
        return grain.sources.ArrayRecordDataSource(list(self.files))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_source"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def read(self, index: int, name: str) -> audio.DecodedAudio:
        """Row ``index`` decoded as `audio.read_audio` decodes its file (``name`` in messages); the
        same AudioError for a row that was unusable at preparation."""
        if index in self.skipped:
            reason, detail = self.skipped[index]
            raise audio.AudioError(reason, name, detail)
        header, data = decode_record(self._source[index], f"the shard record of {name}")
        return audio.decode_audio_bytes(data, header["suffix"], name)


def concatenate_rows(parts: Sequence[ShardRows]) -> ShardRows:
    """The rows of several shard sets one after another (several corpora)."""
    skipped, offset = {}, 0
    for part in parts:
        skipped.update({offset + index: value for index, value in part.skipped.items()})
        offset += len(part.lengths_16k)
    return ShardRows(
        tuple(f for part in parts for f in part.files),
        np.concatenate([part.lengths_16k for part in parts]).astype(np.int64),
        skipped,
    )


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """A shard set as its files describe it: the descriptor, and per row (in the manifest's order) the
    id and length the manifest wrote, and where the row is (`rows`)."""

    descriptor: dict[str, Any]
    folder: Path
    ids: tuple[str, ...]
    num_samples: np.ndarray
    rows: ShardRows


def _damaged(descriptor: Path, problem: str) -> ValueError:
    return ValueError(
        f"{descriptor.parent}: {problem}; the shard set is damaged or incomplete: prepare it again "
        "(w2v-prepare-shards MANIFEST OUT continues or verifies a set)"
    )


def read_index(path: Path) -> tuple[list[str], list[int], list[int], dict[int, tuple[str, str]]]:
    """``index.tsv``: ids, lengths as written, lengths at 16 kHz, and the skipped rows."""
    ids, written, lengths, skipped = [], [], [], {}
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n")[:-1]):
        fields = line.split("\t")
        if len(fields) != 4:
            raise ValueError(f"{path}:{number + 1}: expected id, num_samples, samples_16k, skip; got {line!r}")
        ids.append(fields[0])
        written.append(int(fields[1]))
        lengths.append(int(fields[2]))
        if fields[3]:
            reason, _, detail = fields[3].partition(": ")
            skipped[number] = (reason, detail)
    return ids, written, lengths, skipped


def open_shard_set(path: str | os.PathLike) -> ShardSet:
    """Opens the shard set a folder or ``shards.json`` names, checking that every shard is there with
    the size the descriptor records (`verify_shard_set` checks their contents)."""
    descriptor_file = descriptor_path(path)
    if descriptor_file is None:
        raise ValueError(f"{path}: not a shard set (no {DESCRIPTOR})")
    descriptor = read_json(descriptor_file, expect=dict)
    if descriptor.get("format") != FORMAT:
        raise ValueError(f"{descriptor_file}: not a {FORMAT} descriptor (format={descriptor.get('format')!r})")
    folder = descriptor_file.parent
    for shard in descriptor["shards"]:
        file = folder / shard["file"]
        if not file.is_file():
            raise _damaged(descriptor_file, f"shard {shard['file']} is missing")
        if file.stat().st_size != shard["bytes"]:
            raise _damaged(
                descriptor_file,
                f"shard {shard['file']} is {file.stat().st_size} bytes, the descriptor says {shard['bytes']}",
            )
    ids, written, lengths, skipped = read_index(folder / INDEX)
    if len(ids) != descriptor["rows"] or sum(s["rows"] for s in descriptor["shards"]) != len(ids):
        raise _damaged(descriptor_file, f"{INDEX} has {len(ids)} rows, the descriptor says {descriptor['rows']}")
    rows = ShardRows(
        tuple(str(folder / s["file"]) for s in descriptor["shards"]), np.asarray(lengths, np.int64), skipped
    )
    return ShardSet(descriptor, folder, tuple(ids), np.asarray(written, np.int64), rows)


def verify_shard_set(path: str | os.PathLike) -> str:
    """Hashes every shard of a set and compares with its descriptor; returns a line saying what was
    checked, raises a ValueError naming the first shard that differs."""
    shard_set = open_shard_set(path)
    descriptor_file = shard_set.folder / DESCRIPTOR
    digests = []
    for shard in shard_set.descriptor["shards"]:
        digest = file_digest(shard_set.folder / shard["file"])
        if digest != shard["sha256"]:
            raise _damaged(
                descriptor_file, f"shard {shard['file']} has SHA-256 {digest[:12]}, not {shard['sha256'][:12]}"
            )
        digests.append(digest)
    if set_checksum(digests) != shard_set.descriptor["checksum"]:
        raise _damaged(descriptor_file, "the checksum of the shards differs from the descriptor's")
    return (
        f"{shard_set.folder}: {len(digests)} shards, {len(shard_set.ids)} rows, checksum "
        f"{shard_set.descriptor['checksum'][:16]} verified"
    )
