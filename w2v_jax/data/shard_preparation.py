"""Writing a manifest's audio into a shard set (`shards`), resumably.

Every row is read as the training pipeline reads it (`pipeline.read_row`): a row whose file is
unusable (missing, undecodable, empty, non-finite, shorter than the receptive field, not the length
the manifest says) is logged, counted and kept in the index with its reason, its record holding no
audio, so a run on the shards skips, counts and replaces it as a run on the manifest does, and both
plan the same batches. Usable rows keep their file's bytes as stored.

Shards are filled in row order up to ``shard_mb`` MiB each, records streamed to the file (memory:
the rows read ahead, not a shard). Each is written under a ``.partial`` name, renamed when
complete, and then recorded (its rows, bytes, SHA-256 and rows' index lines) as a line of
``progress.jsonl``; a preparation stopped at any point continues after its last recorded shard and
writes the same bytes an uninterrupted one writes. At the end the index, the label files
and the descriptor (with the set's checksum) are written and the progress file removed; preparing a
finished set again verifies it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from array_record.python import array_record_module

from w2v_jax.data import audio, shards
from w2v_jax.data.labels import read_label_lines
from w2v_jax.data.manifest import Manifest, lengths_at_16k, read_manifest
from w2v_jax.data.pipeline import read_row
from w2v_jax.json_files import loads

logger = logging.getLogger("w2v_jax.data")

PROGRESS = "progress.jsonl"
# Rows decoded ahead of the writer, in parallel threads (libsndfile and soxr release the GIL).
_READ_AHEAD = 64


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.array_record"


def _index_line(manifest: Manifest, index: int, length_16k: int, skip: tuple[str, str] | None) -> str:
    reason = "" if skip is None else " ".join(f"{skip[0]}: {skip[1]}".split())  # one line, no tabs
    return f"{manifest.paths[index]}\t{int(manifest.num_samples[index])}\t{length_16k}\t{reason}"


def _read_rows(manifest: Manifest, start: int, num_workers: int) -> Iterator[tuple[int, tuple[str, str] | None, bytes]]:
    """(row, skip (reason, detail) or None, the file's bytes) for rows ``start``.. in order."""

    def check(index: int) -> tuple[int, tuple[str, str] | None, bytes]:
        samples, (_, reason, detail, _, _) = read_row(manifest, index)
        if samples is None:
            return index, (reason, detail), b""
        return index, None, manifest.file_path(index).read_bytes()

    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for first in range(start, len(manifest), _READ_AHEAD):
            yield from pool.map(check, range(first, min(first + _READ_AHEAD, len(manifest))))


def _read_progress(out: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The shards recorded by an earlier, stopped preparation of the same manifest and settings."""
    path = out / PROGRESS
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    # The last line may be cut short by the stop: only lines that end are records.
    records = [loads(line, path, line=number, expect=dict) for number, line in enumerate(lines[:-1], start=1)]
    if not records:
        return []  # stopped before its settings were recorded
    if records[0] != settings:
        raise ValueError(
            f"{path} belongs to a preparation of another manifest or other settings "
            f"({records[0]}, now {settings}); remove {out} to start again"
        )
    return records[1:]


def _append_progress(out: Path, record: dict[str, Any]) -> None:
    with open(out / PROGRESS, "a", encoding="utf-8") as file:
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())


def _record_header(manifest: Manifest, index: int, labels: dict[str, list[str]], skip: tuple[str, str] | None):
    header: dict[str, Any] = {
        "id": manifest.paths[index],
        "num_samples": int(manifest.num_samples[index]),
        "suffix": manifest.file_path(index).suffix,
    }
    if labels:
        header["labels"] = {extension: lines[index] for extension, lines in labels.items()}
    if skip is not None:
        header["skip"] = list(skip)
    return header


class _ShardWriter:
    """The shard being written: records go straight to its ``.partial`` file, renamed when complete."""

    def __init__(self, out: Path, number: int):
        self.name = shard_name(number)
        self.partial = out / f"{self.name}.partial"
        self._writer = array_record_module.ArrayRecordWriter(str(self.partial), shards.WRITER_OPTIONS)
        self.index_lines: list[str] = []
        self.bytes = 0

    def write(self, record: bytes, index_line: str) -> None:
        self._writer.write(record)
        self.index_lines.append(index_line)
        self.bytes += len(record)

    def close(self) -> dict[str, Any]:
        """Completes the shard under its own name; returns its progress record."""
        self._writer.close()
        path = self.partial.with_name(self.name)
        os.replace(self.partial, path)
        return {
            "file": self.name,
            "rows": len(self.index_lines),
            "bytes": path.stat().st_size,
            "sha256": shards.file_digest(path),
            "index": self.index_lines,
        }


def prepare_shards(
    manifest_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard_mb: float = 256.0,
    labels: Sequence[str] = (),
    num_workers: int = 8,
    allow_outside_root: bool = False,
) -> list[str]:
    """Writes the shard set of a manifest into ``out`` (module docstring), or continues a stopped
    preparation, or verifies a finished one.

    Args:
      manifest_path: a TSV manifest (a folder: write its manifest first with w2v-prepare-manifest).
      out: the shard set's folder (created).
      shard_mb: MiB of records per shard (a shard closes at the first row that reaches it).
      labels: label extensions beside the manifest to keep (``wrd``, ``ltr``, ``phn``), in the records
        and as ``index.<ext>``, for fine-tuning.
      num_workers: threads reading and checking files ahead of the writer.

    Returns:
      report lines: the rows and shards written, the bytes and rows per second, the skipped rows by
      reason; or the verification of a finished set.
    """
    out = Path(out)
    if shards.descriptor_path(out) is not None:
        return ["already prepared; " + shards.verify_shard_set(out)]
    if not Path(manifest_path).is_file():
        raise ValueError(
            f"{manifest_path}: not a manifest file (a folder: write its manifest with w2v-prepare-manifest)"
        )
    if shard_mb <= 0:
        raise ValueError(f"shard_mb must be > 0, got {shard_mb}")
    manifest = read_manifest(manifest_path, allow_outside_root=allow_outside_root)
    label_lines = {extension: read_label_lines(manifest_path, extension, len(manifest)) for extension in labels}
    settings = {
        "format": shards.FORMAT,
        "manifest_fingerprint": manifest.fingerprint(),
        "shard_mb": shard_mb,
        "labels": list(labels),
    }
    out.mkdir(parents=True, exist_ok=True)
    done = _read_progress(out, settings)
    if not done:
        (out / PROGRESS).unlink(missing_ok=True)
        _append_progress(out, settings)
    for partial in out.glob("*.partial"):
        partial.unlink()  # a shard the stop cut short: written again
    start = sum(record["rows"] for record in done)
    if start:
        logger.info("%s: continuing after %d shards (%d of %d rows)", out, len(done), start, len(manifest))
    lengths = lengths_at_16k(manifest, num_workers=num_workers)
    limit = shard_mb * (1 << 20)
    shard = None
    for index, skip, data in _read_rows(manifest, start, num_workers):
        if skip is not None:
            logger.warning("skipping %s: %s (%s)", manifest.file_path(index), *skip)
        if shard is None:
            shard = _ShardWriter(out, len(done))
        record = shards.encode_record(_record_header(manifest, index, label_lines, skip), data)
        shard.write(record, _index_line(manifest, index, int(lengths[index]), skip))
        if shard.bytes >= limit:
            done.append(shard.close())
            _append_progress(out, done[-1])
            shard = None
    if shard is not None:
        done.append(shard.close())
        _append_progress(out, done[-1])
    return _finish(out, manifest_path, manifest, done, label_lines)


def _finish(
    out: Path, manifest_path: str | os.PathLike, manifest: Manifest, done: list[dict[str, Any]], labels: dict
) -> list[str]:
    """Writes the index, the label files and the descriptor of a complete set; removes the progress."""
    index_lines = [line for entry in done for line in entry["index"]]
    (out / shards.INDEX).write_text("".join(f"{line}\n" for line in index_lines), encoding="utf-8")
    for extension, lines in labels.items():
        (out / shards.INDEX).with_suffix(f".{extension}").write_text(
            "".join(f"{line}\n" for line in lines), encoding="utf-8"
        )
    skipped = [line.split("\t")[3].partition(":")[0] for line in index_lines if line.split("\t")[3]]
    skip_counts = {reason: skipped.count(reason) for reason in sorted(set(skipped))}
    digests = [entry["sha256"] for entry in done]
    descriptor: dict[str, Any] = {
        "format": shards.FORMAT,
        "manifest": str(Path(manifest_path).resolve()),
        "manifest_fingerprint": manifest.fingerprint(),
        "rows": len(index_lines),
        "labels": list(labels),
        "skipped": skip_counts,
        "shards": [{k: entry[k] for k in ("file", "rows", "bytes", "sha256")} for entry in done],
        "checksum": shards.set_checksum(digests),
    }
    # The descriptor last: its presence says the set is complete.
    partial = out / f"{shards.DESCRIPTOR}.partial"
    partial.write_text(json.dumps(descriptor, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, out / shards.DESCRIPTOR)
    (out / PROGRESS).unlink()
    total = sum(entry["bytes"] for entry in done)
    usable = [line.split("\t") for line in index_lines]
    hours = sum(int(fields[2]) for fields in usable if not fields[3]) / audio.SAMPLE_RATE / 3600
    lines = [
        f"{out}: {len(index_lines)} rows ({hours:.2f} h usable) in {len(done)} shards, "
        f"{total / (1 << 20):.1f} MiB, checksum {descriptor['checksum'][:16]}"
    ]
    if skip_counts:
        lines.append(
            f"skipped {len(skipped)} unusable rows (kept in the index with their reason): "
            + ", ".join(f"{reason}: {n}" for reason, n in skip_counts.items())
        )
    return lines
