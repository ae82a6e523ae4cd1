"""Tests of w2v_jax/checkpoints/checkpointer.py: round trips, retention, refusal of non-finite states, crash safety."""

import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from tests.support import HANG_TIMEOUT, REPO
from tests.support.states import assert_trees_equal, make_state
from w2v_jax import sharding
from w2v_jax.checkpoints import checkpointer


def test_round_trip_keeps_values_and_shardings(tmp_path):
    mesh = sharding.make_mesh(data=2, fsdp=4)
    state = make_state(1.5, mesh)
    ckpt = checkpointer.Checkpointer(tmp_path, keep=2)
    host = {"data_iterators": [{"epoch": 1, "position": 7}], "rng": [0, 42], "window": [{"loss": 1.25, "x": None}]}
    ckpt.save(3, state, host)
    ckpt.wait()
    target = checkpointer.abstract_like(make_state(0.0, mesh))
    restored, restored_host = ckpt.restore(3, target)
    ckpt.close()
    assert_trees_equal(restored, state)
    assert restored_host == host
    kernel = restored["params"]["kernel"].get_value()
    assert kernel.sharding == state["params"]["kernel"].get_value().sharding
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")


def test_keeps_the_last_n(tmp_path):
    ckpt = checkpointer.Checkpointer(tmp_path, keep=2, async_save=False)
    for step in (1, 2, 3, 4):
        ckpt.save(step, make_state(float(step)), {})
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
    assert ckpt.latest_step() == 4
    restored, _ = ckpt.restore(4, checkpointer.abstract_like(make_state(0.0)))
    assert_trees_equal(restored, make_state(4.0))
    ckpt.close()


def test_relative_directory_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = checkpointer.Checkpointer("runs/ckpt", keep=1, async_save=False)
    ckpt.save(1, make_state(1.0), {})
    ckpt.wait()
    ckpt.close()
    assert ckpt.directory == str(tmp_path / "runs" / "ckpt")
    assert (tmp_path / "runs" / "ckpt" / "1").is_dir()


def test_refuses_non_finite_state(tmp_path):
    ckpt = checkpointer.Checkpointer(tmp_path)
    state = make_state(1.0)
    state["params"]["bias"] = nnx.Param(state["params"]["bias"].get_value().at[3].set(jnp.nan))
    with pytest.raises(checkpointer.NonFiniteCheckpointError, match="step 5"):
        ckpt.save(5, state, {})
    ckpt.close()
    assert ckpt.latest_step() is None
    assert not checkpointer.tree_all_finite({"a": jnp.array([1.0, jnp.inf])})
    assert checkpointer.tree_all_finite({"a": jnp.array([1.0, 2.0]), "n": jnp.array([3])})


KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import orbax.checkpoint._src.path.atomicity as atomicity
    from tests.support.states import make_state
    from w2v_jax.checkpoints import checkpointer

    ckpt = checkpointer.Checkpointer(sys.argv[1], keep=3)
    ckpt.save(1, make_state(1.0), {"n": 1})
    ckpt.wait()

    async def die(*args, **kwargs):
        # The files of step 2 are written, its directory isn't committed yet.
        os.kill(os.getpid(), signal.SIGKILL)

    atomicity.AtomicRenameTemporaryPath.finalize = die
    atomicity.CommitFileTemporaryPath.finalize = die
    ckpt.save(2, make_state(2.0), {"n": 2})
    ckpt.wait()
    print("not killed")
    """
)


def test_kill_during_save_never_restores_the_partial_checkpoint(tmp_path, env):
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert any(".orbax-checkpoint-tmp" in name for name in leftovers), leftovers  # killed mid-save indeed
    ckpt = checkpointer.Checkpointer(tmp_path, keep=3)
    assert ckpt.all_steps() == [1]
    restored, host = ckpt.restore(1, checkpointer.abstract_like(make_state(0.0)))
    assert_trees_equal(restored, make_state(1.0))
    assert host == {"n": 1}
    # The next save of step 2 works over the leftovers (cleaned up at start-up).
    ckpt.save(2, make_state(2.0), {"n": 2})
    ckpt.close()
    assert ckpt.all_steps() == [1, 2]
    assert not any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        checkpointer.Checkpointer(tmp_path, keep=0)
