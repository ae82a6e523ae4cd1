"""Checkpoints of a training run: orbax `CheckpointManager` around the run state plus a JSON side record.

Each checkpoint (`workdir/checkpoints/<step>/`) has two items:
- "state": the train state pytree (parameters, optimizer state, step, counters, PRNG key data),
  written with `StandardSave` (tensorstore, sharded arrays written by the processes that hold them);
- "host": JSON with what lives on the host: every process's data-iterator position, the metrics
  of the logging window in progress, and anything else the trainer must restore for an exact
  resume.

Crash safety is orbax's: a save writes into a temporary directory that is renamed to `<step>`
only once every file of every process is written (`commit_success.txt` marks it on file systems
without atomic rename), so a process killed mid-save leaves a temporary directory that is never
listed as a step and is removed at the next start (`cleanup_tmp_directories`). Saves are
asynchronous: `save` returns once the arrays are copied to host memory, the writing goes on in a
background thread while training continues.

A checkpoint never holds non-finite values: `save` checks the state first and refuses.

Integrity: a third item, "integrity", holds two 32-bit checksums of every array of the state,
computed on device at save time (`state_checksums`: wrap-around integer sums, so the same values
give the same sums under any sharding). `restore` recomputes them on the restored state; damaged
bytes, truncated files, missing items or metadata raise `CorruptCheckpointError` (the word
"corrupt" and the step's path in one line) instead of a tensorstore traceback or a silently wrong
state. The trainer's `restore_newest_intact` moves such a step aside (`<step>.corrupt`, never
deleted) and falls back to the newest intact one. Checkpoints written before checksums existed
restore unverified, with a warning. Readers open the directory with `read_only=True`: they never
create, clean up or move anything, so reading a live run's workdir can't disturb its saves.

Only recognised damage is corruption (`_is_damage`): a missing item or file, tensorstore's "not found",
"data loss" and "out of range" reads, undecodable JSON, a checksum mismatch. Any other failure of a restore
(out of device or host memory, an I/O error of the file system, a wrong restore target) propagates as
it was raised and nothing is moved: the same command works again once the cause is gone.

Readers that need part of the state (`loading.load_model`: the model's variables, not the optimizer's
moments) restore some of its top-level fields alone (`restore(..., partial=True)`, orbax's partial
restore): the other arrays are never read, and the checksums of the arrays read are verified.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from w2v_jax.json_files import JSONFileError, read_json

logger = logging.getLogger(__name__)


class NonFiniteCheckpointError(ValueError):
    """Raised instead of writing a checkpoint whose arrays hold NaN or infinity."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint can't be read back as it was written (damaged, truncated or missing files)."""


# The Composite item holding the state's checksums, and the marker of a moved-aside step.
INTEGRITY_ITEM = "integrity"
CORRUPT_SUFFIX = ".corrupt"
_CHECKSUM_FORMAT = 1
# orbax's messages when an intact checkpoint doesn't fit the requested state (another model or code
# version): not corruption, so never moved aside.
_MISMATCH_MESSAGES = ("tree structures do not match", "is not compatible with the stored shape")


def _as_uint32(x: jax.Array) -> jax.Array:
    """The bits of `x`, flattened, as uint32 words (narrower types widened, wider ones split)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.reshape(-1).astype(jnp.uint32)
    width = x.dtype.itemsize
    if width == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    if width < 4:
        unsigned = {1: jnp.uint8, 2: jnp.uint16}[width]
        return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)  # [..., width // 4] words


@jax.jit
def _checksums(leaves: list[jax.Array]) -> jax.Array:
    """[num_leaves, 2] uint32: per leaf, the sum of its words and the sum of word i times (2i + 1).

    Integer sums wrap modulo 2**32 in any order, so they don't depend on sharding or reduction
    order. A change of any one word changes the second sum (an odd factor is invertible mod 2**32).
    """
    sums = []
    for leaf in leaves:
        words = _as_uint32(leaf)
        weights = 2 * jnp.arange(words.shape[0], dtype=jnp.uint32) + 1
        sums.append(jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * weights, dtype=jnp.uint32)]))
    return jnp.stack(sums) if sums else jnp.zeros((0, 2), jnp.uint32)


def state_checksums(tree: Any) -> dict[str, list[int]]:
    """Two uint32 checksums of every array of `tree`, keyed by its path (`jax.tree_util.keystr`)."""
    paths_and_leaves = jax.tree_util.tree_leaves_with_path(tree)
    sums = np.asarray(jax.device_get(_checksums([leaf for _, leaf in paths_and_leaves])))
    return {jax.tree_util.keystr(path): [int(a), int(b)] for (path, _), (a, b) in zip(paths_and_leaves, sums)}


def _read_only_options() -> ocp.CheckpointManagerOptions:
    """A reader's view of a checkpoint directory another process may be writing: its temporary
    directories stay untouched, nothing is created (a new object per manager: orbax fills it in)."""
    return ocp.CheckpointManagerOptions(
        read_only=True, save_interval_steps=0, create=False, cleanup_tmp_directories=False
    )


# tensorstore's status codes (the first word of its errors' messages) of files that are missing,
# truncated or undecodable; RESOURCE_EXHAUSTED, UNAVAILABLE, UNKNOWN (an OS error) and the others
# are not damage.
_DAMAGE_CODES = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE")
# Errors of the machine or the file system, never of a checkpoint's bytes.
_NOT_DAMAGE_CODES = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED")


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from or while handling, innermost last."""
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return chain


def _is_damage(error: BaseException) -> bool:
    """Whether a restore's `error` says the checkpoint's files are damaged: missing (FileNotFoundError,
    tensorstore's NOT_FOUND), truncated or unreadable (DATA_LOSS, OUT_OF_RANGE), undecodable JSON (nested
    too deep to parse included).
    An error of memory (MemoryError, RESOURCE_EXHAUSTED) or of the file system (an OSError other than
    a missing file) anywhere in its chain is not damage, whatever else the chain says."""
    chain = _causes(error)
    for link in chain:
        message = str(link)
        if isinstance(link, MemoryError) or any(code in message for code in _NOT_DAMAGE_CODES):
            return False
        if isinstance(link, OSError) and link.errno not in (None, errno.ENOENT, errno.ENOTDIR):
            return False
    for link in chain:
        if isinstance(link, FileNotFoundError | json.JSONDecodeError | UnicodeDecodeError):
            return True
        # JSON nested too deep to parse: Python's json parser says what it was decoding.
        if isinstance(link, RecursionError) and "while decoding a JSON" in str(link):
            return True
        if isinstance(link, ValueError | RuntimeError) and str(link).lstrip().startswith(_DAMAGE_CODES):
            return True
    return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _is_abandoned_read(unraisable: Any) -> bool:
    """An error of orbax's reads of a checkpoint whose restore already failed: tensorstore finishes
    the other arrays' reads and each reports to the closed event loop, or a read coroutine is closed."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


class _AbandonedReadFilter(logging.Filter):
    """Drops asyncio's "exception was never retrieved" reports of orbax's reads (the same abandoned
    reads, when the event loop's handler sees them first): a traceback per array otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in str(record.msg) or not record.exc_info:
            return True
        traceback = record.exc_info[2]
        while traceback is not None:
            if "orbax" in traceback.tb_frame.f_code.co_filename:
                return False
            traceback = traceback.tb_next
        return True


class _AbandonedReadHook:
    """The unraisable-exception hook of `_drop_abandoned_reads`: `_is_abandoned_read` errors dropped,
    every other one handed to the `previous` hook."""

    drops_abandoned_reads = True  # the mark that it is installed

    def __init__(self, previous: Callable[[Any], object]) -> None:
        self._previous = previous

    def __call__(self, unraisable: Any) -> None:
        if not _is_abandoned_read(unraisable):
            self._previous(unraisable)


def _drop_abandoned_reads() -> None:
    """Installs (once) an unraisable-exception hook that drops `_is_abandoned_read` errors, which
    would print a traceback per array of a corrupt checkpoint (every other one goes to the previous
    hook), and `_AbandonedReadFilter` on asyncio's logger."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_abandoned_reads", False):
        return
    logging.getLogger("asyncio").addFilter(_AbandonedReadFilter())

    sys.unraisablehook = _AbandonedReadHook(previous)


def _field_checksums(checksums: dict[str, list[int]], fields: dict[str, Any]) -> dict[str, list[int]]:
    """The saved `checksums` of the arrays under the top-level `fields` of the state, keyed as
    `state_checksums(fields)` keys them: the state was a dataclass (`.params[...]`) or a dict
    (`['params'][...]`), the fields are a dict."""
    picked = {}
    for name in fields:
        ours = jax.tree_util.keystr((jax.tree_util.DictKey(name),))
        for saved in (jax.tree_util.keystr((jax.tree_util.GetAttrKey(name),)), ours):
            for key, sums in checksums.items():
                rest = key[len(saved) :]
                if key.startswith(saved) and rest[:1] in ("", "[", "."):
                    picked[ours + rest] = sums
    return picked


def corrupt_checkpoints(directory: str | os.PathLike) -> list[str]:
    """The names of the steps moved aside as corrupt in `directory` (`<step>.corrupt[.n]`), sorted."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    names = (p.name for p in directory.iterdir())
    return sorted(name for name in names if name.partition(".")[0].isdigit() and CORRUPT_SUFFIX in name)


def has_checkpoints(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds step folders (committed or not): a run to resume, not a new one."""
    directory = pathlib.Path(directory)
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def tree_all_finite(tree: Any) -> bool:
    """True when every floating-point array of `tree` is free of NaN and infinity.

    Jitted so it also works on arrays sharded over several processes (the result is replicated).
    """
    return bool(_all_finite(tree))


def _open_manager(directory: str, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    """orbax's manager of `directory`.

    Opening it reads every step's `_CHECKPOINT_METADATA`: orbax passes over one that is not valid JSON
    (restoring that step then reports it corrupt), but lets a RecursionError out of one nested too deep
    to parse. That step is named corrupt here, in one line (CorruptCheckpointError).
    """
    try:
        return ocp.CheckpointManager(directory, options=options)
    except RecursionError:
        for metadata in sorted(pathlib.Path(directory).glob("*/_CHECKPOINT_METADATA")):
            try:
                read_json(metadata)
            except JSONFileError as error:
                raise CorruptCheckpointError(
                    f"checkpoint {metadata.parent} is corrupt or incomplete: its metadata is unreadable "
                    f"({error.problem})"
                ) from None
        raise


class Checkpointer:
    """Periodic, asynchronous, keep-the-last-N checkpoints of a train state and its host record.

    Args:
      directory: where the step directories go (created if missing).
      keep: how many of the most recent checkpoints to keep.
      async_save: write in a background thread (the train loop goes on meanwhile).
      read_only: for readers of another run's checkpoints (evaluate, export): nothing is created,
        cleaned up, moved or deleted, and `save` is refused.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True, read_only: bool = False):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        # orbax refuses relative paths; a workdir given as runs/tiny must work.
        self.directory = os.path.abspath(os.fspath(directory))
        self.read_only = read_only
        if read_only:
            if not os.path.isdir(self.directory):
                raise ValueError(f"{self.directory} is not a checkpoint directory")
            options = _read_only_options()
        else:
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(keep),
                # Only explicit saves (the trainer decides when); a should_save policy would be a second one.
                save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(1),
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True,
            )
        self._manager = _open_manager(self.directory, options)
        self._partial_manager: ocp.CheckpointManager | None = None

    def _restoring_manager(self, partial: bool) -> ocp.CheckpointManager:
        """The manager of a restore. orbax binds an item to the handler of its first save or restore:
        the state's is the standard handler, and a partial restore needs the pytree handler, so partial
        restores go through a read-only manager of their own."""
        if not partial:
            return self._manager
        if self._partial_manager is None:
            self._partial_manager = _open_manager(self.directory, _read_only_options())
        return self._partial_manager

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step (partial ones are never listed), or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, host: dict[str, Any]) -> None:
        """Starts saving `state` and the JSON-serialisable `host` record as checkpoint `step`.

        Every process must call it (each writes its shards). Raises NonFiniteCheckpointError
        if a floating-point array of `state` isn't finite.
        """
        if self.read_only:
            raise ValueError(f"{self.directory} was opened read-only: checkpoint {step} can't be saved")
        if not tree_all_finite(state):
            raise NonFiniteCheckpointError(f"refusing to checkpoint step {step}: the state holds NaN or infinity")
        integrity = {"format": _CHECKSUM_FORMAT, "checksums": state_checksums(state)}
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                host=ocp.args.JsonSave(host),
                **{INTEGRITY_ITEM: ocp.args.JsonSave(integrity)},
            ),
            force=True,
        )
        if saved:
            logger.info("checkpoint %d: save started in %s", step, self.directory)

    def restore(self, step: int, abstract_state: Any, *, partial: bool = False) -> tuple[Any, dict[str, Any]]:
        """Restores checkpoint `step` into the structure, dtypes and shardings of `abstract_state`.

        Args:
          step: a step from `latest_step()` / `all_steps()`.
          abstract_state: pytree of `jax.ShapeDtypeStruct` with `.sharding` (the live state's layout);
            with `partial`, a dict of some top-level fields of the saved state (a train state's
            `{"params": ..., "model_state": ...}`).
          partial: read the fields of `abstract_state` alone (orbax's partial restore): the saved
            state's other arrays are never read, and only the arrays read are checked against their
            checksums.

        Returns:
          (state, host record); with `partial`, the state is a dict of the fields asked for.

        Raises:
          CorruptCheckpointError: the files read are damaged, truncated or incomplete, or the restored
            arrays differ from their checksums at save time.
          ValueError: an intact checkpoint of another state structure or shapes.
          Any other error of the restore (memory, the file system, the target) as it was raised.
        """
        path = self.step_path(step)
        verified = self._has_integrity_item(step)
        if partial:
            self._check_fields(step, abstract_state)
            state = ocp.args.PyTreeRestore(
                abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
                partial_restore=True,
            )
        else:
            state = ocp.args.StandardRestore(abstract_state)
        items = {"state": state, "host": ocp.args.JsonRestore()}
        if verified:
            items[INTEGRITY_ITEM] = ocp.args.JsonRestore()
        try:
            restored = self._restoring_manager(partial).restore(step, args=ocp.args.Composite(**items))
        except Exception as error:
            # A part gone is damage whatever orbax made of it (without the state's metadata it guesses
            # the tree's structure, and reports a mismatch).
            missing = [part for part in (*items, "state/_METADATA") if not (path / part).exists()]
            if not missing and any(m in str(error) for m in _MISMATCH_MESSAGES):
                raise ValueError(
                    f"checkpoint {path} does not match the state this run builds ({_first_line(error)}); "
                    "was it written by another model config or code version?"
                ) from None
            if not missing and not _is_damage(error):
                raise
            _drop_abandoned_reads()
            detail = f"missing: {', '.join(missing)}" if missing else _first_line(error)
            raise CorruptCheckpointError(f"checkpoint {path} is corrupt or incomplete ({detail})") from None
        if verified:
            expected = restored[INTEGRITY_ITEM].get("checksums", {})
            if partial:
                expected = _field_checksums(expected, restored["state"])
            actual = state_checksums(restored["state"])
            damaged = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
            if damaged:
                raise CorruptCheckpointError(
                    f"checkpoint {path} is corrupt: {len(damaged)} of {len(actual)} arrays differ from their "
                    f"checksums at save time (first: {damaged[0]})"
                )
        else:
            logger.warning("checkpoint %s has no checksums (written before they existed): restored unverified", path)
        return restored["state"], restored["host"]

    def step_path(self, step: int) -> pathlib.Path:
        """The folder of checkpoint `step`."""
        return pathlib.Path(self.directory) / str(step)

    def _check_fields(self, step: int, fields: dict[str, Any]) -> None:
        """Raises ValueError unless the saved state's `fields` hold exactly the arrays `fields` holds
        (orbax's partial restore would hand back a missing array's target and drop an extra one
        silently), CorruptCheckpointError when the state's metadata can't be read."""
        path = self.step_path(step)
        handler = ocp.PyTreeCheckpointHandler()
        try:
            stored = handler.metadata(path / "state").tree
        except Exception as error:
            if not _is_damage(error):
                raise
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt or incomplete: its state's metadata is missing or unreadable "
                f"({_first_line(error)})"
            ) from None
        finally:
            handler.close()
        wanted = set(ocp.tree.to_flat_dict(fields))
        saved = set(ocp.tree.to_flat_dict({name: stored[name] for name in fields if name in stored}))
        missing, extra = sorted(wanted - saved), sorted(saved - wanted)
        if missing or extra:
            first = "/".join(map(str, (missing or extra)[0]))
            raise ValueError(
                f"checkpoint {path} does not match the state this run builds ({len(missing)} arrays missing, "
                f"{len(extra)} not in the model; first: {first}); was it written by another model config or "
                "code version?"
            )

    def _has_integrity_item(self, step: int) -> bool:
        """Whether checkpoint `step` has checksums to verify; raises CorruptCheckpointError when its
        metadata says it should and they are missing, or the metadata itself is missing or unreadable."""
        path = self.step_path(step)
        if (path / INTEGRITY_ITEM).is_dir():
            return True
        try:
            items = read_json(path / "_CHECKPOINT_METADATA", expect=dict)["item_handlers"]
        except (FileNotFoundError, ValueError, KeyError) as error:
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt or incomplete: its metadata is missing or unreadable "
                f"({_first_line(error)})"
            ) from None
        if INTEGRITY_ITEM in items:
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt or incomplete: its {INTEGRITY_ITEM} item is missing"
            )
        return False

    def restore_newest_intact(
        self, abstract_state: Any, *, move_aside: bool = True, partial: bool = False
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """Restores the newest checkpoint that is intact, trying older ones after a corrupt one.

        Each corrupt step is reported in one line (with "corrupt" and its path) and, with
        `move_aside` (the trainer, which holds the workdir's lock), renamed to `<step>.corrupt`
        (never deleted) by process 0. All processes agree on each outcome before going on.

        Args:
          abstract_state: the restore target, as for `restore`.
          move_aside: rename corrupt steps; False for readers (and read-only checkpointers).
          partial: restore the fields of `abstract_state` alone, as for `restore`.

        Returns:
          `(step, state, host)`, or None when the directory holds no checkpoint.

        Raises:
          CorruptCheckpointError: there are checkpoints but none is intact (the message names them).
          Any other error of a restore (not damage: `restore`), at once, with no step moved.
        """
        steps = sorted(self.all_steps(), reverse=True)
        failures: list[str] = []
        for step in steps:
            try:
                state, host = self.restore(step, abstract_state, partial=partial)
                error = None
            except CorruptCheckpointError as e:
                error = e
            errors = (
                multihost_utils.process_allgather(np.int32(error is not None))
                if jax.process_count() > 1
                else [error is not None]
            )
            if not any(np.asarray(errors).reshape(-1)):
                if failures:
                    logger.warning("falling back to checkpoint %d, the newest intact one in %s", step, self.directory)
                return step, state, host
            message = (
                str(error) if error is not None else f"checkpoint {self.step_path(step)} is corrupt on another process"
            )
            failures.append(message)
            logger.error("%s", message)
            if move_aside and not self.read_only:
                self._move_aside(step)
        if failures:
            raise CorruptCheckpointError(
                f"no intact checkpoint in {self.directory}: {'; '.join(failures)}"
                + ("; the corrupt ones were moved aside (*.corrupt)" if move_aside and not self.read_only else "")
            )
        return None

    def _move_aside(self, step: int) -> None:
        """Renames checkpoint `step` to `<step>.corrupt[.n]` (process 0) and forgets it."""
        path = self.step_path(step)
        if jax.process_index() == 0:
            target, number = path.with_name(path.name + CORRUPT_SUFFIX), 1
            while target.exists():
                target, number = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{number}"), number + 1
            os.replace(path, target)
            logger.error("moved the corrupt checkpoint %s aside to %s", path, target.name)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"move aside checkpoint {step}")
        self._manager.reload()
        if self._partial_manager is not None:
            self._partial_manager.reload()

    def wait(self) -> None:
        """Blocks until the save in progress (if any) is written and committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads."""
        self._manager.close()
        if self._partial_manager is not None:
            self._partial_manager.close()


def abstract_like(state: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) of a live state: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
