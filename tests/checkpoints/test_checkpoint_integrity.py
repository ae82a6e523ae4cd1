"""Tests of checkpointer.py's integrity checks: checksums, corrupt checkpoints moved aside, read-only readers,
partial restores that read and verify some of the state's fields alone.

Faults are injected into the files of a real checkpoint (flipped array bytes, truncated files, deleted
metadata or items) and restore must name the step's path with the word "corrupt", never return
a silently wrong state.
"""

import errno
import json
import logging
import pathlib
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import NESTED_JSON
from tests.support.states import assert_trees_equal, make_state
from w2v_jax import sharding
from w2v_jax.checkpoints import checkpointer


def checksums_oracle(x: np.ndarray) -> list[int]:
    """NumPy reference of the two checksums: word sum and (2i + 1)-weighted word sum, mod 2**32."""
    words = np.ascontiguousarray(x).reshape(-1).view(np.uint32).astype(np.uint64)
    weights = 2 * np.arange(words.size, dtype=np.uint64) + 1
    return [int(words.sum() % 2**32), int((words * weights % 2**32).sum() % 2**32)]


def test_checksums_match_the_numpy_oracle_under_any_sharding():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 24)).astype(np.float32)
    n = rng.integers(-(2**31), 2**31 - 1, size=(40,), dtype=np.int32)
    tree = {"x": jnp.asarray(x), "n": jnp.asarray(n)}
    expected = {"['n']": checksums_oracle(n), "['x']": checksums_oracle(x)}
    assert checkpointer.state_checksums(tree) == expected
    mesh = sharding.make_mesh(data=2, fsdp=4)
    sharded = {
        "x": jax.device_put(tree["x"], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "fsdp"))),
        "n": jax.device_put(tree["n"], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))),
    }
    assert checkpointer.state_checksums(sharded) == expected


def test_checksums_see_a_single_flipped_bit_and_narrow_dtypes():
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    flipped = x.copy()
    flipped.view(np.uint32)[37] ^= 1 << 31  # a sign bit
    assert checkpointer.state_checksums(jnp.asarray(x)) != checkpointer.state_checksums(jnp.asarray(flipped))
    half = jnp.asarray(x, jnp.bfloat16)
    changed = half.at[5].set(half[5] + 1)
    assert checkpointer.state_checksums(half) != checkpointer.state_checksums(changed)
    assert checkpointer.state_checksums({"k": jax.random.key(0)})  # typed keys hash their key data


def state_of(step: int) -> dict:
    noise = np.random.default_rng(step).standard_normal(512).astype(np.float32)
    return {**make_state(float(step)), "noise": jnp.asarray(noise)}


@pytest.fixture
def two_checkpoints(tmp_path):
    """Checkpoints 1 and 2 (`state_of(1)`, `state_of(2)`) in tmp_path/checkpoints."""
    directory = tmp_path / "checkpoints"
    ckpt = checkpointer.Checkpointer(directory, keep=3, async_save=False)
    ckpt.save(1, state_of(1), {"n": 1})
    ckpt.save(2, state_of(2), {"n": 2})
    ckpt.close()
    return directory


def largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def flip_bytes(step_dir: pathlib.Path) -> None:
    """Flips the bits of one byte in the middle of the largest array file."""
    path = largest_array_file(step_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def swapped_arrays(step_dir: pathlib.Path) -> None:
    """Step 1's array files in step 2's place: well-formed files with other values (orbax can't tell)."""
    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "1" / "state", step_dir / "state")


def truncate(step_dir):
    path = largest_array_file(step_dir)
    path.write_bytes(path.read_bytes()[:40])


def remove(relative):
    def fault(step_dir):
        path = step_dir / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return fault


@pytest.mark.parametrize(
    "fault",
    [
        flip_bytes,
        swapped_arrays,
        truncate,
        remove("state/_METADATA"),
        remove("state/manifest.ocdbt"),
        remove("host"),
        remove("integrity"),
    ],
    ids=[
        "flipped_bytes",
        "swapped_arrays",
        "truncated_file",
        "no_state_metadata",
        "no_manifest",
        "no_host_item",
        "no_checksums",
    ],
)
def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_falls_back(two_checkpoints, fault, caplog):
    step_dir = two_checkpoints / "2"
    fault(step_dir)
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    target = checkpointer.abstract_like(state_of(0))
    with pytest.raises(checkpointer.CorruptCheckpointError, match=f"checkpoint {step_dir} is corrupt"):
        ckpt.restore(2, target)
    step, state, host = ckpt.restore_newest_intact(target)
    assert step == 1 and host == {"n": 1}
    assert_trees_equal(state, state_of(1))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("corrupt" in m and str(step_dir) in m and "\n" not in m for m in errors), errors
    assert any("falling back to checkpoint 1" in r.getMessage() for r in caplog.records)
    assert not step_dir.exists() and (two_checkpoints / "2.corrupt").is_dir()  # moved, not deleted
    assert ckpt.all_steps() == [1]
    # Training goes on: step 2 is saved again beside the moved-aside copy.
    ckpt.save(2, state_of(2), {"n": 2})
    ckpt.close()
    assert checkpointer.Checkpointer(two_checkpoints, read_only=True).all_steps() == [1, 2]


def test_lost_bookkeeping_file_with_verified_arrays_still_restores(two_checkpoints):
    """Only orbax's `_CHECKPOINT_METADATA` is gone: the arrays verify against their checksums."""
    (two_checkpoints / "2" / "_CHECKPOINT_METADATA").unlink()
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    step, state, host = ckpt.restore_newest_intact(checkpointer.abstract_like(state_of(0)))
    ckpt.close()
    assert step == 2 and host == {"n": 2}
    assert_trees_equal(state, state_of(2))


def test_metadata_nested_too_deep_to_parse_is_corruption(two_checkpoints):
    """JSON nested deeper than Python's parser recurses, in orbax's `_CHECKPOINT_METADATA` (read as the
    directory opens): the step is named corrupt in one line; in the host record: the step is corrupt
    like any undecodable one, moved aside, and the restore falls back."""
    metadata = two_checkpoints / "2" / "_CHECKPOINT_METADATA"
    written = metadata.read_text()
    metadata.write_text(NESTED_JSON)
    with pytest.raises(checkpointer.CorruptCheckpointError) as info:
        checkpointer.Checkpointer(two_checkpoints, read_only=True)
    message = str(info.value)
    step_dir = two_checkpoints / "2"
    assert message.startswith(f"checkpoint {step_dir} is corrupt or incomplete: its metadata is unreadable (JSON")
    assert "nested deeper" in message and "\n" not in message
    metadata.write_text(written)
    (two_checkpoints / "2" / "host" / "metadata").write_text(NESTED_JSON)
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    step, state, host = ckpt.restore_newest_intact(checkpointer.abstract_like(state_of(0)))
    ckpt.close()
    assert step == 1 and host == {"n": 1} and (two_checkpoints / "2.corrupt").is_dir()
    assert_trees_equal(state, state_of(1))


def test_no_intact_checkpoint_refuses_with_every_path(two_checkpoints):
    for step in (1, 2):
        flip_bytes(two_checkpoints / str(step))
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    with pytest.raises(checkpointer.CorruptCheckpointError) as info:
        ckpt.restore_newest_intact(checkpointer.abstract_like(state_of(0)))
    message = str(info.value)
    assert "\n" not in message and "no intact checkpoint" in message
    assert str(two_checkpoints / "1") in message and str(two_checkpoints / "2") in message
    assert sorted(p.name for p in two_checkpoints.iterdir() if "corrupt" in p.name) == ["1.corrupt", "2.corrupt"]


def test_a_checkpoint_of_another_model_is_a_mismatch_not_corruption(two_checkpoints):
    state = state_of(0)
    state["extra"] = jnp.zeros(3)
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    with pytest.raises(ValueError, match="does not match the state this run builds") as info:
        ckpt.restore(2, checkpointer.abstract_like(state))
    assert not isinstance(info.value, checkpointer.CorruptCheckpointError)
    assert (two_checkpoints / "2").is_dir()


def test_checkpoint_without_checksums_restores_unverified(two_checkpoints, caplog):
    """A checkpoint written before checksums existed: metadata without the integrity item."""
    step_dir = two_checkpoints / "2"
    shutil.rmtree(step_dir / "integrity")
    metadata = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
    del metadata["item_handlers"]["integrity"]
    (step_dir / "_CHECKPOINT_METADATA").write_text(json.dumps(metadata))
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    state, host = ckpt.restore(2, checkpointer.abstract_like(state_of(0)))
    assert_trees_equal(state, state_of(2))
    assert any("restored unverified" in r.getMessage() for r in caplog.records)


def test_reader_leaves_a_live_run_alone(two_checkpoints):
    """A save in progress (temporary folder) survives a reader; the reader refuses to save or move."""
    in_flight = two_checkpoints / "3.orbax-checkpoint-tmp-1234"
    (in_flight / "state").mkdir(parents=True)
    (in_flight / "state" / "partial").write_bytes(b"x" * 10)
    swapped_arrays(two_checkpoints / "2")
    before = sorted(str(p.relative_to(two_checkpoints)) for p in two_checkpoints.rglob("*"))
    reader = checkpointer.Checkpointer(two_checkpoints, read_only=True)
    step, state, _ = reader.restore_newest_intact(checkpointer.abstract_like(state_of(0)))
    assert step == 1
    with pytest.raises(ValueError, match="read-only"):
        reader.save(4, state_of(4), {})
    reader.close()
    assert sorted(str(p.relative_to(two_checkpoints)) for p in two_checkpoints.rglob("*")) == before
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        checkpointer.Checkpointer(two_checkpoints / "missing", read_only=True)
    assert not (two_checkpoints / "missing").exists()


def test_abandoned_reads_of_a_corrupt_checkpoint_print_no_tracebacks(two_checkpoints, monkeypatch):
    """After a failed restore tensorstore finishes the other reads into orbax's closed event loop:
    one unraisable "Event loop is closed" per array, dropped; any other unraisable error still shows."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    truncate(two_checkpoints / "2")
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    with pytest.raises(checkpointer.CorruptCheckpointError):
        ckpt.restore(2, checkpointer.abstract_like(state_of(0)))
    loop_closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None)
    other = types.SimpleNamespace(exc_value=ValueError("something else"), object=None)
    sys.unraisablehook(loop_closed)
    sys.unraisablehook(other)
    assert [u for u in seen if u in (loop_closed, other)] == [other]


def test_asyncio_reports_of_abandoned_orbax_reads_are_dropped():
    # asyncio reports a gathered read's unretrieved exception through its logger when its handler
    # sees it before the garbage collector: dropped when raised in orbax's code, kept otherwise.
    namespace = {}
    exec(
        compile(
            "def read():\n    raise ValueError('OUT_OF_RANGE')\n", "/lib/orbax/checkpoint/serialization.py", "exec"
        ),
        namespace,
    )
    errors = []
    for raise_it in (namespace["read"], lambda: (_ for _ in ()).throw(ValueError("ours"))):
        try:
            raise_it()
        except ValueError as error:
            errors.append(error)

    def record(message, error):
        exc_info = None if error is None else (type(error), error, error.__traceback__)
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, exc_info)

    keep = checkpointer._AbandonedReadFilter().filter
    assert not keep(record("_GatheringFuture exception was never retrieved", errors[0]))
    assert keep(record("_GatheringFuture exception was never retrieved", errors[1]))
    assert keep(record("Task was destroyed but it is pending!", errors[0]))
    assert keep(record("_GatheringFuture exception was never retrieved", None))


@pytest.fixture
def damaged_in_part(tmp_path):
    """Checkpoint 2 whose parameters verify but whose optimizer state doesn't, and checkpoint 3 the
    other way round: each holds step 1's files, and the checksums of a state that differs from step
    1's in that part alone."""
    state = state_of(1)
    plus_one = lambda tree: jax.tree.map(lambda x: x + 1, tree)  # noqa: E731
    ckpt = checkpointer.Checkpointer(tmp_path, keep=3, async_save=False)
    ckpt.save(1, state, {})
    ckpt.save(2, {**state, "opt_state": plus_one(state["opt_state"])}, {})
    ckpt.save(3, {**state, "params": plus_one(state["params"])}, {})
    ckpt.close()
    for step in ("2", "3"):
        swapped_arrays(tmp_path / step)
    return tmp_path


def test_a_partial_restore_reads_and_verifies_the_fields_asked_for_alone(damaged_in_part, read_arrays):
    reader = checkpointer.Checkpointer(damaged_in_part, read_only=True)
    full = checkpointer.abstract_like(state_of(0))
    params = {"params": full["params"]}
    restored, _ = reader.restore(2, params, partial=True)
    assert_trees_equal(restored, {"params": state_of(1)["params"]})
    assert read_arrays and all(name.startswith("params.") for name in read_arrays), read_arrays
    with pytest.raises(checkpointer.CorruptCheckpointError, match=f"checkpoint {damaged_in_part / '2'} is corrupt"):
        reader.restore(2, full)  # the whole state (a resume) checks the optimizer's arrays too
    assert any(name.startswith("opt_state.") for name in read_arrays)
    with pytest.raises(
        checkpointer.CorruptCheckpointError, match=rf"checkpoint {damaged_in_part / '3'} is corrupt: 2 of 2 arrays"
    ):
        reader.restore(3, params, partial=True)
    step, restored, _ = reader.restore_newest_intact(params, move_aside=False, partial=True)
    assert step == 2
    reader.close()


def test_a_partial_restore_of_other_fields_is_a_mismatch_not_corruption(damaged_in_part):
    reader = checkpointer.Checkpointer(damaged_in_part, read_only=True)
    params = checkpointer.abstract_like(state_of(0))["params"]
    fewer = {"params": {"kernel": params["kernel"]}}
    more = {"params": {**params, "scale": jax.ShapeDtypeStruct((16,), jnp.float32)}}
    for target, counts in ((fewer, "0 arrays missing, 1 not in the model"), (more, "1 arrays missing, 0 not")):
        with pytest.raises(ValueError, match=f"does not match the state this run builds \\({counts}") as info:
            reader.restore(1, target, partial=True)
        assert not isinstance(info.value, checkpointer.CorruptCheckpointError)
    reader.close()


def listing(directory: pathlib.Path) -> dict:
    return {str(p.relative_to(directory)): None if p.is_dir() else p.read_bytes() for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize(
    "failure",
    [
        MemoryError("host memory"),
        ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2147483648 bytes."),
        OSError(errno.EIO, "Input/output error"),
        RuntimeError("UNKNOWN: Error reading local file: [OS error 5: Input/output error]"),
        TypeError("a bug in the restore target"),
    ],
    ids=["host_memory", "device_memory", "io_error", "tensorstore_io_error", "target_bug"],
)
def test_a_failure_that_is_not_damage_propagates_and_moves_nothing(two_checkpoints, monkeypatch, failure):
    before = listing(two_checkpoints)

    def fails(self, *args, **kwargs):
        raise failure

    monkeypatch.setattr(checkpointer.ocp.CheckpointManager, "restore", fails)
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    with pytest.raises(type(failure)) as info:
        ckpt.restore_newest_intact(checkpointer.abstract_like(state_of(0)))
    assert info.value is failure
    ckpt.close()
    assert listing(two_checkpoints) == before


def test_an_unreadable_metadata_file_is_not_damage(two_checkpoints, monkeypatch):
    """EIO reading `_CHECKPOINT_METADATA` (a network mount's error): propagated, nothing moved."""
    read_text = pathlib.Path.read_text

    def eio(self, *args, **kwargs):
        if self.name == "_CHECKPOINT_METADATA":
            raise OSError(errno.EIO, "Input/output error", str(self))
        return read_text(self, *args, **kwargs)

    shutil.rmtree(two_checkpoints / "2" / "integrity")  # so that the metadata file is read
    before = listing(two_checkpoints)
    monkeypatch.setattr(pathlib.Path, "read_text", eio)
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    with pytest.raises(OSError, match="Input/output error"):
        ckpt.restore_newest_intact(checkpointer.abstract_like(state_of(0)))
    ckpt.close()
    assert listing(two_checkpoints) == before


def test_a_wrong_restore_target_is_not_damage(two_checkpoints):
    """A restore target that is not abstract arrays (a bug of ours): orbax's own error, nothing moved."""
    before = listing(two_checkpoints)
    target = jax.tree.map(lambda _: "not an array", checkpointer.abstract_like(state_of(0)))
    ckpt = checkpointer.Checkpointer(two_checkpoints, keep=3, async_save=False)
    with pytest.raises(Exception) as info:
        ckpt.restore_newest_intact(target)
    assert not isinstance(info.value, checkpointer.CorruptCheckpointError)
    ckpt.close()
    assert listing(two_checkpoints) == before
