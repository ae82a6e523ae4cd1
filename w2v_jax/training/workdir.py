"""A training run's directory: who may write it, what may change on resume, its metrics file, disk full.
(Its file names are `checkpoints.run_layout`'s, which the readers of a run share.)

The trainer calls these in this order before it compiles anything:

1. `WorkdirLock`: process 0 takes an exclusive `flock` on `WORKDIR/lock` (pid, host and start time
   written inside). A second launcher on the same workdir fails at once with `WorkdirLockedError`
   naming the holder. The kernel drops the lock when the holder dies, SIGKILL included, so a crashed
   run never leaves the workdir locked. Readers (evaluate, export) take no lock.
2. `check_resume_config`: a resumed run's config is compared with the stored `config.json` before
   anything is written. Fields that shape the model, its state or its data refuse to change
   (`ConfigChangedError` naming each `field: old -> new`); the fields of `RESUMABLE_FIELDS` may change,
   and the changes are logged and kept in `config_changes.jsonl`.
3. `start_metrics_file`: a run that starts without a checkpoint moves an earlier `metrics.jsonl` aside
   (`metrics.jsonl.<n>.old`) so its file holds this run's records only.

`disk_full_message` turns a "No space left on device" anywhere in an exception's chain (an
`OSError` or tensorstore's text of it from orbax's writer threads) into one line naming the workdir
and its free space; the launcher exits with it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import shutil
import socket
from collections.abc import Mapping
from typing import Any

from w2v_jax.checkpoints.run_layout import CONFIG_CHANGES_FILE, CONFIG_FILE, LOCK_FILE
from w2v_jax.json_files import JSONFileError, read_json

logger = logging.getLogger(__name__)

# Fields a resumed run may change: how long it runs, the learning-rate schedule, how often it logs,
# saves and evaluates, and how it runs (workers, devices, processes, bad-input policy). Everything
# else (the model, the optimizer's other settings, the data and its crops, the seed) is part of what
# the checkpoint holds or of what the resumed run must replay, and may not change.
RESUMABLE_FIELDS = frozenset(
    {
        "train.num_steps",
        "train.learning_rate",
        "train.warmup_steps",
        "train.lr_schedule",
        "train.lr_end",
        "train.lr_power",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.plot",
        "train.eval_every",
        "train.async_checkpointing",
        "train.start_over_corrupt",
        "train.max_consecutive_nonfinite",
        "train.health",
        "train.health_window",
        "train.health_recent",
        "data.num_workers",
        "data.strict",
        "data.max_skip_fraction",
        "data.valid_manifest",
    }
)
# Sections that describe where and how the run executes, never what it computes.
RESUMABLE_SECTIONS = ("mesh.", "distributed.")


class WorkdirError(RuntimeError):
    """A run's directory can't be used as asked; the message is one line for the user."""


class WorkdirLockedError(WorkdirError):
    """Another live process holds the workdir's lock."""


class ConfigChangedError(WorkdirError):
    """A resumed run's config changes fields the checkpoints depend on."""


class WorkdirLock:
    """An exclusive, advisory lock on a workdir, held from `acquire()` to `release()` (or `with`).

    `flock` is released by the kernel when the holding process exits in any way. On NFS, Linux
    emulates it with POSIX byte-range locks, which hold across clients when the server's lock
    service works; a file system without locks (`ENOLCK`, `EOPNOTSUPP`) gets a warning and no lock.

    Args:
      workdir: the run's directory (created if missing).
      enabled: False on processes other than 0 of a multi-host run: they share process 0's lock.
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.enabled = enabled
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises WorkdirLockedError naming the holder (never blocks)."""
        if not self.enabled or self._fd is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "an unknown process"
            os.close(fd)
            raise WorkdirLockedError(
                f"workdir {self.workdir} is in use by {holder}; wait for that run to end or use another --workdir"
            ) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            logger.warning(
                "the file system of %s has no locks (%s): two runs on it are not prevented", self.workdir, error
            )
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since {started})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drops the lock (closing the file is what releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"num_steps": 5}}` -> `{"train.num_steps": 5}`; tuples become lists (JSON's view)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def _resumable(field: str) -> bool:
    return field in RESUMABLE_FIELDS or field.startswith(RESUMABLE_SECTIONS)


def check_resume_config(
    stored: Mapping[str, Any], new: Mapping[str, Any], where: str = CONFIG_FILE
) -> dict[str, tuple[Any, Any]]:
    """Compares a resumed run's config with the one its workdir holds.

    Args:
      stored: the workdir's `config.json`, parsed.
      new: the config of the run that resumes, as a dict.
      where: the stored config's path, for messages.

    Returns:
      the allowed changes, `{field: (old, new)}` (fields of `RESUMABLE_FIELDS` / `RESUMABLE_SECTIONS`).
      A field the stored config lacks (written before the field existed) is not a change: the run
      had that field's default.

    Raises:
      ConfigChangedError: naming every other changed field as `field: old -> new`.
    """
    old_flat, new_flat = _flatten(stored), _flatten(new)
    changed = {
        field: (old_flat[field], value)
        for field, value in new_flat.items()
        if field in old_flat and old_flat[field] != value
    }
    refused = {field: change for field, change in changed.items() if not _resumable(field)}
    if refused:
        listed = ", ".join(f"{field}: {old!r} -> {value!r}" for field, (old, value) in sorted(refused.items()))
        raise ConfigChangedError(
            f"the config differs from {where} in fields a resumed run can't change ({listed}); "
            "restore them, or start a new run in another --workdir"
        )
    return {field: change for field, change in changed.items() if _resumable(field)}


def prepare_config(
    workdir: str | os.PathLike,
    config: Mapping[str, Any],
    config_json: str,
    *,
    has_checkpoints: bool,
    write: bool = True,
) -> None:
    """Checks the config against a resumed workdir's, then writes `config.json`.

    Args:
      workdir: the run's directory.
      config: the run's config as a dict.
      config_json: its JSON text, as stored in `config.json`.
      has_checkpoints: whether the workdir holds checkpoints (a resume); without them the stored
        config belongs to a run that saved nothing and is replaced.
      write: False on processes other than 0: they check (and fail) alike, process 0 writes.

    Raises:
      ConfigChangedError: see `check_resume_config`; nothing is written then.
    """
    workdir = pathlib.Path(workdir)
    path = workdir / CONFIG_FILE
    if has_checkpoints and path.is_file():
        try:
            stored = read_json(path, expect=dict)
        except JSONFileError as error:
            raise WorkdirError(f"{error}; the checkpoints can't be checked against it") from None
        changes = check_resume_config(stored, config, where=str(path))
        if changes and write:
            logger.warning(
                "resuming with changed settings: %s",
                ", ".join(f"{field}: {old!r} -> {new!r}" for field, (old, new) in sorted(changes.items())),
            )
            record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(), "changes": changes}
            with open(workdir / CONFIG_CHANGES_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    if not write:
        return
    tmp = path.with_name(CONFIG_FILE + ".tmp")
    tmp.write_text(config_json + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a kill mid-write leaves the old config.json, never half of one


def start_metrics_file(path: str | os.PathLike) -> pathlib.Path | None:
    """Moves an existing metrics file aside (`<name>.<n>.old`) for a run that starts from scratch.

    Returns the new name of the old file, or None when there was none.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return None
    number = 1
    while (aside := path.with_name(f"{path.name}.{number}.old")).exists():
        number += 1
    os.replace(path, aside)
    logger.warning(
        "no checkpoint to resume from: the earlier %s is kept as %s, this run starts a new one", path.name, aside.name
    )
    return aside


def _chain(error: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and the members of exception groups."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    out: list[BaseException] = []
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        out.append(current)
        stack.extend([current.__cause__, current.__context__, *getattr(current, "exceptions", ())])
    return out


def is_disk_full(error: BaseException) -> bool:
    """Whether "No space left on device" (ENOSPC, or a disk quota) is among `error`'s causes."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
    return False


def disk_full_message(error: BaseException, workdir: str | os.PathLike) -> str | None:
    """One line for a disk-full `error` (naming the workdir and its free space), or None for others."""
    if not is_disk_full(error):
        return None
    try:
        free = f"{shutil.disk_usage(workdir).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return (
        f"no space left on device writing {workdir} ({free}); the checkpoints committed before are intact: "
        "free some space and rerun the same command to resume"
    )


def drop_disk_full_records(record: logging.LogRecord) -> bool:
    """A logging filter: False (drop) for records about a full disk, whose traceback would bury the
    launcher's one-line `disk_full_message`; True for every other record."""
    if record.exc_info and record.exc_info[1] is not None and is_disk_full(record.exc_info[1]):
        return False
    return "No space left on device" not in record.getMessage()
