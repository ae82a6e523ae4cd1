"""fairseq-style TSV manifests and folder scanning.

A manifest's first line is the root folder; each further line is ``relative/path<TAB>num_samples``.
A relative root (e.g. ``.``) is resolved against the manifest file's folder, so a manifest shipped
inside a package works wherever the package is installed. ``num_samples`` is the utterance's length
in samples at 16 kHz (what the model sees); for 16 kHz files this is fairseq's frame count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile
from tqdm import tqdm

from w2v_jax.data import audio, shards, skips

# Formats whose headers give exact frame counts; others (mp3, ogg...) are decoded to measure them.
_EXACT_HEADER_EXTENSIONS = frozenset({".wav", ".flac", ".aiff", ".aif", ".au", ".caf", ".w64"})


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Utterances under one root.

    root: absolute folder; paths: as written in the manifest (relative to root unless allowed);
    num_samples: int64 [num_files] lengths at 16 kHz; source: where it came from, for messages;
    known_bad: index -> (skip reason, detail) for files a folder scan could not read; shard_rows: for
    a shard set (`shards`), where its rows' audio is (None: in the files under root); entry_paths: the
    paths as their own manifests write them, where `paths` differ (a concatenation's are absolute),
    else empty.
    """

    root: Path
    paths: tuple[str, ...]
    num_samples: np.ndarray
    source: str
    known_bad: Mapping[int, tuple[str, str]] = dataclasses.field(default_factory=dict)
    shard_rows: shards.ShardRows | None = None
    entry_paths: tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.paths) != len(self.num_samples):
            raise ValueError(f"{len(self.paths)} paths but {len(self.num_samples)} lengths")

    def __len__(self) -> int:
        return len(self.paths)

    def file_path(self, index: int) -> Path:
        """Where row ``index``'s file is (for a shard set: its id under the set's folder, a name for
        messages: the audio is read from the shards by `read`)."""
        return self.root / self.paths[index]

    def read(self, index: int) -> audio.DecodedAudio:
        """Row ``index`` decoded to 16 kHz mono (`audio.read_audio`), from its file or its shard."""
        if self.shard_rows is not None:
            return self.shard_rows.read(index, str(self.file_path(index)))
        return audio.read_audio(self.file_path(index))

    def lengths_16k(self) -> np.ndarray:
        """int64 [num_files] lengths at 16 kHz (`lengths_at_16k`; a shard set's are in its index)."""
        if self.shard_rows is not None:
            return self.shard_rows.lengths_16k
        return lengths_at_16k(self)

    def fingerprint(self) -> str:
        """sha256 over the entries (paths as their manifests write them and lengths, not the roots: a
        moved corpus keeps it, one manifest or several)."""
        digest = hashlib.sha256()
        for path, length in zip(self.entry_paths or self.paths, self.num_samples.tolist()):
            digest.update(f"{path}\t{length}\n".encode())
        return digest.hexdigest()


def concatenate_manifests(manifests: Sequence[Manifest]) -> Manifest:
    """One manifest of the rows of ``manifests`` in order (root ``/``, absolute paths: each part's
    rows resolved under its own root, already checked by its loading; its fingerprint is over the
    parts' entries as written, so the corpora may move). Shard sets concatenate with shard sets only."""
    with_shards = {part.shard_rows is not None for part in manifests}
    if len(with_shards) > 1:
        raise ValueError(
            f"{' + '.join(part.source for part in manifests)}: shard sets and manifests cannot be mixed; "
            "prepare shards of each manifest (w2v-prepare-shards)"
        )
    paths: list[str] = []
    entries: list[str] = []
    lengths: list[np.ndarray] = []
    known_bad: dict[int, tuple[str, str]] = {}
    for part in manifests:
        for index, (reason, detail) in part.known_bad.items():
            known_bad[len(paths) + index] = (reason, detail)
        paths.extend(os.path.relpath(part.file_path(i), "/") for i in range(len(part)))
        entries.extend(part.entry_paths or part.paths)
        lengths.append(part.num_samples)
    source = " + ".join(part.source for part in manifests)
    parts = [part.shard_rows for part in manifests if part.shard_rows is not None]
    rows = shards.concatenate_rows(parts) if with_shards == {True} else None
    return Manifest(
        Path("/"), tuple(paths), np.concatenate(lengths).astype(np.int64), source, known_bad, rows, tuple(entries)
    )


def _check_inside_root(path: str, where: str) -> None:
    """Refuses absolute paths and ``..`` components: a manifest must not reach outside its root."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or os.path.isabs(path) or ".." in pure.parts:
        raise ValueError(
            f"{where}: path {path!r} escapes the manifest root (absolute or '..'); "
            "pass allow_outside_root=True if this is intended"
        )


def read_manifest(path: str | os.PathLike, *, allow_outside_root: bool = False) -> Manifest:
    """Parses a TSV manifest; raises ValueError naming the line for malformed or escaping entries."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: empty manifest (the first line must be the root folder)")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        root = path.parent / root
    paths, lengths = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rsplit("\t", 1)
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'relative/path<TAB>num_samples', got {line!r}")
        try:
            length = int(fields[1])
        except ValueError:
            raise ValueError(f"{where}: num_samples {fields[1]!r} is not an integer") from None
        if length < 0:
            raise ValueError(f"{where}: negative num_samples {length}")
        if not allow_outside_root:
            _check_inside_root(fields[0], where)
        paths.append(fields[0])
        lengths.append(length)
    if not paths:
        raise ValueError(f"{path}: the manifest lists no files (only its root line {lines[0].strip()!r})")
    if not allow_outside_root:
        _check_links_inside_root(root.resolve(), paths, path)
    return Manifest(root.resolve(), tuple(paths), np.asarray(lengths, np.int64), str(path))


def _check_links_inside_root(root: Path, paths: Sequence[str], manifest: Path) -> None:
    """Refuses entries that a symbolic link (of the file or of a folder on its way) takes out of ``root``.

    Folders are resolved once each and files are resolved only when they are links, so a manifest
    of a million files costs one ``lstat`` per file.
    """
    resolved_folders: dict[Path, Path] = {}
    for relative in paths:
        lexical = root / relative
        folder = resolved_folders.get(lexical.parent)
        if folder is None:
            folder = resolved_folders[lexical.parent] = lexical.parent.resolve()
        target = folder / lexical.name
        if target.is_symlink():
            target = target.resolve()
        if not target.is_relative_to(root):
            raise ValueError(
                f"{manifest}: entry {relative!r} leads outside the manifest root {root} through a symbolic link "
                f"(to {target}); pass allow_outside_root=True (data.allow_outside_root) if this is intended"
            )


def write_manifest(
    path: str | os.PathLike, root: str | os.PathLike, paths: Sequence[str], num_samples: Sequence[int] | np.ndarray
) -> None:
    """Writes a TSV manifest; ``root`` is written as given (``.`` keeps the manifest relocatable)."""
    lines = [str(root)] + [f"{p}\t{int(n)}" for p, n in zip(paths, num_samples, strict=True)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def probe_length(path: str | os.PathLike) -> int:
    """Length at 16 kHz of one file: from the header where exact, else by decoding it.

    Raises audio.AudioError for missing, unreadable or empty files.
    """
    path = Path(path)
    if path.suffix.lower() not in _EXACT_HEADER_EXTENSIONS:
        return int(audio.read_audio(path).samples.shape[0])
    if not path.is_file():
        raise audio.AudioError(skips.MISSING, path, "no such file")
    if path.stat().st_size == 0:
        raise audio.AudioError(skips.EMPTY, path, "the file has 0 bytes")
    try:
        info = soundfile.info(path)
    except Exception as error:
        raise audio.AudioError(skips.UNREADABLE, path, f"{type(error).__name__}: {error}") from error
    if info.frames <= 0:
        raise audio.AudioError(skips.EMPTY, path, "the header reports no samples")
    return audio.resampled_length(info.frames, info.samplerate)


def lengths_at_16k(manifest: Manifest, *, num_workers: int = 8) -> np.ndarray:
    """The manifest's lengths at 16 kHz, int64 [num_files], read before any file is decoded.

    A row's length is ours (16 kHz samples) or the file's frame count at its own rate, as fairseq's
    ``wav2vec_manifest.py`` (or any tool that reads the header) writes it. The header of each file
    whose format states an exact frame count is read (rate and frames, no decoding); a row equal to
    the frame count of a file not at 16 kHz is a native count and becomes the 16 kHz length soxr
    produces. Every other row is used as written (an unreadable file is skipped when it is read).
    """
    lengths = np.array(manifest.num_samples, np.int64)

    def header(index: int) -> tuple[int, int] | None:
        path = manifest.file_path(index)
        if path.suffix.lower() not in _EXACT_HEADER_EXTENSIONS:
            return None
        try:
            info = soundfile.info(path)
        except Exception:  # noqa: BLE001 - any decoder error: the row is read (and skipped) later
            return None
        return int(info.frames), int(info.samplerate)

    # libsndfile releases the GIL: headers are read in parallel threads.
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        headers = list(pool.map(header, range(len(manifest))))
    for index, found in enumerate(headers):
        if found is not None and found[1] != audio.SAMPLE_RATE and found[0] == lengths[index]:
            lengths[index] = audio.resampled_length(found[0], found[1])
    return lengths


def find_audio_files(folder: str | os.PathLike) -> list[str]:
    """Audio files under ``folder`` (recursively, sorted), as POSIX paths relative to it."""
    folder = Path(folder)
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in audio.AUDIO_EXTENSIONS:
                found.append((Path(directory) / name).relative_to(folder).as_posix())
    return found


def scan_folder(folder: str | os.PathLike, *, num_workers: int = 8, progress: bool = False) -> Manifest:
    """Builds a manifest of every audio file under ``folder``, probing lengths in parallel threads.

    Files that cannot be probed stay in the manifest with length 0 and their reason in
    ``known_bad``; the caller logs and counts them (the pipeline does so like any other bad file).
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    paths = find_audio_files(folder)
    if not paths:
        raise ValueError(f"no audio files ({', '.join(sorted(audio.AUDIO_EXTENSIONS))}) under {folder}")

    def probe(relative: str) -> int | audio.AudioError:
        try:
            return probe_length(folder / relative)
        except audio.AudioError as error:
            return error

    # libsndfile and the decoders release the GIL, so threads probe files in parallel.
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        results = list(
            tqdm(
                pool.map(probe, paths),
                total=len(paths),
                desc=f"scanning {folder.name}",
                unit="file",
                disable=not progress,
            )
        )
    lengths = np.zeros(len(paths), np.int64)
    known_bad = {}
    for index, result in enumerate(results):
        if isinstance(result, audio.AudioError):
            known_bad[index] = (result.reason, result.detail)
        else:
            lengths[index] = result
    return Manifest(folder, tuple(paths), lengths, str(folder), known_bad)


def load_manifest(
    manifest_or_folder: str | os.PathLike, *, allow_outside_root: bool = False, num_workers: int = 8
) -> Manifest:
    """A TSV manifest file, a shard set (its folder or ``shards.json``: `shards`), or a folder to scan."""
    source = Path(manifest_or_folder)
    if shards.descriptor_path(source) is not None:
        return open_shards(source)
    if source.is_dir():
        return scan_folder(source, num_workers=num_workers)
    if not source.is_file():
        raise ValueError(f"{source}: no such manifest file or folder")
    return read_manifest(source, allow_outside_root=allow_outside_root)


def open_shards(path: str | os.PathLike) -> Manifest:
    """The manifest of a shard set (`shards.open_shard_set`): the rows, paths and lengths of the
    manifest it was prepared from, the audio read from its shards."""
    shard_set = shards.open_shard_set(path)
    source = str(shard_set.folder / shards.DESCRIPTOR)
    return Manifest(shard_set.folder, shard_set.ids, shard_set.num_samples, source, shard_rows=shard_set.rows)


def load_waveforms(manifest: str | os.PathLike, *, normalize: bool = True) -> list[np.ndarray]:
    """Every utterance of a manifest, float32 `[samples]` at 16 kHz (normalised as training does)."""
    entries = load_manifest(manifest)
    waveforms = [entries.read(i).samples for i in range(len(entries))]
    return [audio.normalize(w) for w in waveforms] if normalize else waveforms


def valid_manifest_path(out: str | os.PathLike) -> Path:
    """valid.tsv beside train.tsv; NAME_valid.tsv beside any other NAME.tsv."""
    out = Path(out)
    return out.with_name("valid.tsv" if out.name == "train.tsv" else f"{out.stem}_valid{out.suffix or '.tsv'}")


def prepare_manifests(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    valid_fraction: float = 0.0,
    seed: int = 0,
    num_workers: int = 8,
    strict: bool = False,
) -> list[str]:
    """Scans `folder` and writes its train manifest `out` (and a valid one with `valid_fraction`).

    Unusable files are logged and left out (`strict`: a `BadInputError` at the first one). A seeded
    random `valid_fraction` of the good files goes to `valid_manifest_path(out)`.

    Returns:
      report lines: one per manifest written (files, hours), then the skipped files by reason.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid fraction must be in [0, 1), got {valid_fraction}")
    manifest = scan_folder(folder, num_workers=num_workers, progress=True)
    for index, (reason, detail) in sorted(manifest.known_bad.items()):
        if strict:
            raise skips.BadInputError(f"{manifest.file_path(index)}: {reason} ({detail})")
        logging.warning("skipping %s: %s (%s)", manifest.file_path(index), reason, detail)
    good = np.asarray([i for i in range(len(manifest)) if i not in manifest.known_bad], np.int64)
    num_valid = int(round(valid_fraction * len(good)))
    in_valid = np.zeros(len(good), bool)
    in_valid[np.random.default_rng(seed).permutation(len(good))[:num_valid]] = True
    splits = {Path(out): good[~in_valid]}
    if valid_fraction > 0:
        splits[valid_manifest_path(out)] = good[in_valid]
    lines = []
    for path, indices in splits.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(path, manifest.root, [manifest.paths[i] for i in indices], manifest.num_samples[indices])
        hours = manifest.num_samples[indices].sum() / audio.SAMPLE_RATE / 3600
        lines.append(f"{path}: {len(indices)} files, {hours:.2f} h")
    if manifest.known_bad:
        reasons = [reason for reason, _ in manifest.known_bad.values()]
        lines.append(
            f"skipped {len(reasons)} unusable files: "
            + ", ".join(f"{r}: {reasons.count(r)}" for r in sorted(set(reasons)))
        )
    return lines
