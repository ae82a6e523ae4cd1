"""Bad-input accounting: every unusable file is skipped, logged once with its path and reason, and counted.

A run never dies on one bad file (unless ``strict``), and never loses files silently: per-reason
counts go into the run's metrics (``skip_counts``) and a ``summary`` is printed at the end. Counts are
per distinct manifest entry (a file that is bad in every epoch counts once), kept in a compact per-file
status array so they survive checkpoint/restore.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger("w2v_jax.data")

MISSING = "missing"
UNREADABLE = "unreadable"  # undecodable: random bytes, truncated or corrupt streams, unknown formats
EMPTY = "empty"
NON_FINITE = "non_finite"  # NaN or Inf samples
SHORTER_THAN_RECEPTIVE_FIELD = "shorter_than_receptive_field"  # < audio.RECEPTIVE_FIELD samples at 16 kHz
LENGTH_MISMATCH = "length_mismatch"  # decoded length differs from the manifest's
SHORTER_THAN_MIN_SAMPLE_SIZE = "shorter_than_min_sample_size"  # the configured length filter

# Order fixes the status codes stored in checkpoints: append only.
SKIP_REASONS = (
    MISSING,
    UNREADABLE,
    EMPTY,
    NON_FINITE,
    SHORTER_THAN_RECEPTIVE_FIELD,
    LENGTH_MISMATCH,
    SHORTER_THAN_MIN_SAMPLE_SIZE,
)
# Dropping utterances below min_sample_size is a choice of the run, not broken data: it is logged and
# counted, but neither ``strict`` nor ``max_skip_fraction`` treats it as an error.
FILTER_REASONS = frozenset({SHORTER_THAN_MIN_SAMPLE_SIZE})
RESAMPLED = "resampled"
DOWNMIXED = "downmixed"

_SEEN = 1
_RESAMPLED = 2
_DOWNMIXED = 4
_REASON_SHIFT = 3  # reason code (1-based index into SKIP_REASONS) in bits 3..5
# The skip fraction is measured against at least this many files, so the first bad file of a run
# cannot trip it (a manifest smaller than this is measured against its full size).
_MIN_FILES_FOR_FRACTION = 100
# Below this many bad files the fraction never stops a run: in a folder of 10 files one bad file is
# 10%, a fraction that says nothing yet (``strict`` is the setting that stops on the first one).
_MIN_BAD_FILES_FOR_FRACTION = 2


class TooManySkippedFiles(RuntimeError):
    """More than ``max_skip_fraction`` of the files seen so far were unusable."""


class BadInputError(ValueError):
    """Raised in strict mode for the first unusable file."""


def _reason_code(reason: str) -> int:
    return SKIP_REASONS.index(reason) + 1


class SkipTracker:
    """Per-file status (seen / converted / skip reason) for the entries of one manifest.

    describe: index -> path string for log messages. strict: the first bad (non-filter) file
    raises BadInputError. max_skip_fraction: more bad files than this fraction of those seen
    raises TooManySkippedFiles.
    """

    def __init__(self, num_files: int, describe: Callable[[int], str], *, strict: bool, max_skip_fraction: float):
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self._status = np.zeros(num_files, np.uint8)
        self._describe = describe
        self._strict = strict
        self._max_skip_fraction = max_skip_fraction

    def record(
        self,
        index: int,
        *,
        reason: str | None = None,
        detail: str = "",
        resampled: bool = False,
        downmixed: bool = False,
    ) -> None:
        """Records the outcome of reading file ``index``; logs and checks limits on first sight."""
        old = int(self._status[index])
        new = old | _SEEN | (_RESAMPLED if resampled else 0) | (_DOWNMIXED if downmixed else 0)
        if reason is not None:
            new = (new & ((1 << _REASON_SHIFT) - 1)) | (_reason_code(reason) << _REASON_SHIFT)
        self._status[index] = new
        if new == old:
            return  # already known: a bad file re-read in a later epoch is not counted or logged again
        path = self._describe(index)
        if reason is None:
            if (new & ~old) & (_RESAMPLED | _DOWNMIXED):
                logger.info("converted %s: %s", path, detail)
            return
        logger.warning("skipping %s: %s (%s)", path, reason, detail)
        if reason in FILTER_REASONS:
            return
        if self._strict:
            raise BadInputError(f"strict mode: {path}: {reason} ({detail})")
        self.check_fraction()

    def check_fraction(self) -> None:
        """Raises TooManySkippedFiles when bad files exceed max_skip_fraction of the files seen.

        The fraction is bad / max(distinct files read, min(manifest size, 100)), and a single bad file
        never trips it (the first bad file of a small folder says nothing of the fraction yet).
        """
        counts = self.skip_counts()
        bad = sum(n for reason, n in counts.items() if reason not in FILTER_REASONS)
        seen = int(np.count_nonzero(self._status & _SEEN))
        denominator = max(seen, min(len(self._status), _MIN_FILES_FOR_FRACTION))
        if bad > self._max_skip_fraction * denominator and bad >= _MIN_BAD_FILES_FOR_FRACTION:
            details = ", ".join(f"{r}: {n}" for r, n in counts.items() if n and r not in FILTER_REASONS)
            raise TooManySkippedFiles(
                f"{bad} of {seen} files read so far are unusable ({details}), more than "
                f"max_skip_fraction={self._max_skip_fraction} of {denominator} files (measured over the distinct "
                f"files read so far, at least min(manifest size, {_MIN_FILES_FOR_FRACTION}); a single bad file "
                "never counts); check the data (the log names every file) or raise data.max_skip_fraction"
            )

    def skip_counts(self) -> dict[str, int]:
        """Distinct skipped files per reason, every reason present (stable metric keys)."""
        codes = np.bincount(self._status >> _REASON_SHIFT, minlength=len(SKIP_REASONS) + 1)
        return {reason: int(codes[i + 1]) for i, reason in enumerate(SKIP_REASONS)}

    def conversion_counts(self) -> dict[str, int]:
        """Distinct files that were resampled to 16 kHz / averaged to mono."""
        return {
            RESAMPLED: int(np.count_nonzero(self._status & _RESAMPLED)),
            DOWNMIXED: int(np.count_nonzero(self._status & _DOWNMIXED)),
        }

    def summary(self) -> str:
        """One line for the end of a run: files seen, skipped per reason, converted."""
        seen = int(np.count_nonzero(self._status & _SEEN))
        skipped = {r: n for r, n in self.skip_counts().items() if n}
        converted = {r: n for r, n in self.conversion_counts().items() if n}
        skipped_text = ", ".join(f"{r}: {n}" for r, n in skipped.items()) or "none"
        converted_text = ", ".join(f"{r}: {n}" for r, n in converted.items()) or "none"
        return (
            f"input files: {seen} of {len(self._status)} seen; skipped {sum(skipped.values())} "
            f"({skipped_text}); converted ({converted_text})"
        )

    def state(self) -> str:
        """JSON-friendly encoding of the per-file status (zlib + base64; tiny for clean corpora)."""
        return _encode(self._status)

    def set_state(self, encoded: str) -> None:
        self._status = _decode(encoded, len(self._status)).copy()


def _encode(status: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(status.tobytes(), 9)).decode("ascii")


def _decode(encoded: str, num_files: int) -> np.ndarray:
    status = np.frombuffer(zlib.decompress(base64.b64decode(encoded)), np.uint8)
    if status.shape != (num_files,):
        raise ValueError(f"skip state covers {status.shape[0]} files, the manifest has {num_files}")
    return status


def merge_states(states: Sequence[str], num_files: int) -> str:
    """One ``SkipTracker.state()`` holding what each of ``states`` (trackers of the same manifest, e.g.
    of several processes) knows of each file; no states: nothing known."""
    status = np.zeros(num_files, np.uint8)
    for encoded in states:
        # A file's reason and conversions are the same whoever read it: the union of the bits.
        status |= _decode(encoded, num_files)
    return _encode(status)
