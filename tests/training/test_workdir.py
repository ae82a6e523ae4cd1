"""Tests of w2v_jax/workdir.py and the trainer's use of it: the faults users cause on a run's directory.

Faults are injected in-process (a second lock holder, a changed config, a torn metrics file, a
corrupt checkpoint, ENOSPC from orbax's writer thread); two subprocesses check what only a process
boundary shows: a killed holder frees the lock, a second launcher exits at once with one line.
"""

import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import ml_collections
import orbax.checkpoint._src.path.atomicity as atomicity
import pytest

from tests.support import HANG_TIMEOUT, NESTED_JSON, REPO
from w2v_jax.checkpoints import checkpointer, load_model, run_layout
from w2v_jax.cli import run_faults_exit, unknown_field_message
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.pretraining.task import PretrainingTask
from w2v_jax.training import metrics, trainer, workdir

# --- lock -------------------------------------------------------------------------------------------


def test_second_holder_is_refused_naming_the_first(tmp_path):
    with workdir.WorkdirLock(tmp_path):
        with pytest.raises(workdir.WorkdirLockedError) as info:
            workdir.WorkdirLock(tmp_path).acquire()
    message = str(info.value)
    assert message.startswith(f"workdir {tmp_path} is in use by pid {os.getpid()} on host {socket.gethostname()}")
    assert "\n" not in message
    with workdir.WorkdirLock(tmp_path):  # released at the end of the first `with`
        pass
    # Processes other than 0 of a multi-host run don't lock (process 0 holds it for them).
    with workdir.WorkdirLock(tmp_path), workdir.WorkdirLock(tmp_path, enabled=False):
        pass


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from w2v_jax.training import workdir
    workdir.WorkdirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_holder_leaves_the_workdir_unlocked(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(workdir.WorkdirLockedError, match=f"pid {holder.pid} "):
            workdir.WorkdirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir.WorkdirLock(tmp_path):  # the kernel dropped the dead process's lock
        assert f"pid {os.getpid()} " in (tmp_path / run_layout.LOCK_FILE).read_text()


def test_a_second_launcher_exits_at_once_with_one_line(tmp_path, env):
    with workdir.WorkdirLock(tmp_path):
        holder = (tmp_path / run_layout.LOCK_FILE).read_text().strip()
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.pretrain", f"--workdir={tmp_path}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_TIMEOUT,
        )
    assert holder.startswith(f"pid {os.getpid()} on host {socket.gethostname()} (since ")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"workdir {tmp_path} is in use by {holder}; wait for that run to end or use another --workdir"
    )
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_layout.LOCK_FILE]  # nothing else touched


# --- config on resume -------------------------------------------------------------------------------


def test_model_and_data_changes_are_refused_naming_old_and_new():
    stored = pretrain_config.get_config("tiny").to_dict()
    new = pretrain_config.get_config("tiny")
    new.model.hidden_size = 64
    new.data.max_sample_size = 48_000
    with pytest.raises(workdir.ConfigChangedError) as info:
        workdir.check_resume_config(stored, new.to_dict(), where="run/config.json")
    message = str(info.value)
    assert "data.max_sample_size: 32000 -> 48000, model.hidden_size: 32 -> 64" in message
    assert "run/config.json" in message and "\n" not in message


def test_schedule_and_logging_changes_are_allowed_and_missing_fields_are_no_change():
    stored = pretrain_config.get_config("tiny").to_dict()
    del stored["data"]["strict"]  # a workdir written before the field existed
    new = pretrain_config.get_config("tiny")
    new.train.num_steps, new.train.learning_rate, new.train.log_every = 500, 1e-3, 5
    new.data.num_workers = 2
    new.distributed.coordinator_address = "host:1234"
    changes = workdir.check_resume_config(stored, new.to_dict())
    assert changes == {
        "train.num_steps": (300, 500),
        "train.learning_rate": (2e-3, 1e-3),
        "train.log_every": (10, 5),
        "data.num_workers": (0, 2),
        "distributed.coordinator_address": ("", "host:1234"),
    }
    assert workdir.check_resume_config(stored, pretrain_config.get_config("tiny").to_dict()) == {}


def tiny_config(num_steps: int) -> ml_collections.ConfigDict:
    """The tiny config at its smallest: 8 x 1 s crops (one per simulated device), a checkpoint per step."""
    config = pretrain_config.get_config("tiny")
    config.train.num_steps = num_steps
    config.train.warmup_steps = 1
    config.train.log_every = 1
    config.train.checkpoint_every = 1
    config.train.plot = False
    config.data.max_sample_size = config.data.min_sample_size = 16_000
    return config


def test_resume_with_another_model_writes_nothing(tmp_path):
    """The refusal comes before anything is written: config.json stays the stored run's."""
    stored = tiny_config(2)
    (tmp_path / "config.json").write_text(stored.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    before = (tmp_path / "config.json").read_bytes()
    changed = tiny_config(4)
    changed.model.num_hidden_layers = 3
    with pytest.raises(workdir.ConfigChangedError, match=r"model.num_hidden_layers: 2 -> 3"):
        trainer.train_and_evaluate(changed, str(tmp_path), PretrainingTask())
    assert (tmp_path / "config.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "config.json", run_layout.LOCK_FILE]


def test_unknown_command_line_field_is_one_line():
    error = AttributeError("'\\'num_stesp\\'\\nDid you mean \"num_steps\" instead of \"num_stesp\"?'")
    message = unknown_field_message(error, "config", ["pretrain", "--workdir=x", "--config.train.num_stesp=5"])
    assert message == (
        "unknown config field in --config.train.num_stesp: the config has no field 'num_stesp' "
        "(did you mean 'num_steps'?)"
    )


# --- metrics, corrupt checkpoints and a full disk in a real (tiny) run --------------------------------


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def killed_then_disk_full(tmp_path_factory):
    """One tiny run with two faults (one compile for all the tests below):

    - its workdir holds the metrics of an earlier run (steps 1, 2 and half a line) that died before
      any checkpoint;
    - the disk fills while checkpoint 3 commits (ENOSPC raised in orbax's background thread).
    """
    run = tmp_path_factory.mktemp("run")
    old = '{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n{"step": 3, "lo'
    (run / metrics.METRICS_FILE).write_text(old)
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def disk_full_at_3(self, *args, **kwargs):
        if self._final_path.name == "3":
            raise OSError(errno.ENOSPC, "No space left on device")
        return await finalize(self, *args, **kwargs)

    records = Records()
    logging.getLogger().addHandler(records)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full_at_3)
            with pytest.raises(Exception) as info:
                trainer.train_and_evaluate(tiny_config(3), str(run), PretrainingTask())
    finally:
        logging.getLogger().removeHandler(records)
    return run, old, info.value, records.records


def test_a_run_from_scratch_starts_a_clean_metrics_file(killed_then_disk_full):
    run, old, _, _ = killed_then_disk_full
    lines = (run / metrics.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]  # every line whole, no old record
    assert (run / "metrics.jsonl.1.old").read_text() == old  # kept aside, byte for byte


def test_disk_full_in_the_checkpoint_writer_is_one_line(killed_then_disk_full):
    """The launcher's message names the workdir and its free space; its log filter drops orbax's
    tracebacks; the committed checkpoints stay."""
    run, _, error, records = killed_then_disk_full
    message = workdir.disk_full_message(error, str(run))
    assert message is not None and message.startswith(f"no space left on device writing {run} (")
    assert "MiB free)" in message and "\n" not in message
    assert workdir.disk_full_message(ValueError("shape mismatch"), str(run)) is None
    assert any("No space left on device" in r.getMessage() or r.exc_info for r in records)  # orbax logged it
    kept = [r for r in records if workdir.drop_disk_full_records(r)]
    assert not any("No space left on device" in r.getMessage() or r.exc_info for r in kept)
    assert checkpointer.Checkpointer(run / "checkpoints", read_only=True).all_steps() == [1, 2]


def test_a_corrupt_newest_checkpoint_falls_back_to_the_intact_one(killed_then_disk_full, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(killed_then_disk_full[0], run)
    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "2" / "state")  # well-formed files of other values: only checksums tell
    shutil.copytree(checkpoints / "1" / "state", checkpoints / "2" / "state")
    with caplog.at_level(logging.INFO):
        # num_steps may change on resume
        summary = trainer.train_and_evaluate(tiny_config(1), str(run), PretrainingTask())
    assert summary["step"] == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(m.startswith(f"checkpoint {checkpoints / '2'} is corrupt: ") for m in errors), errors
    assert any("falling back to checkpoint 1" in r.getMessage() for r in caplog.records)
    assert any("resumed from checkpoint 1 " in r.getMessage() for r in caplog.records)
    assert (checkpoints / "2.corrupt").is_dir() and not (checkpoints / "2").exists()
    assert [r["step"] for r in metrics.read_metrics(run / metrics.METRICS_FILE)] == [1]
    changes = [json.loads(line) for line in (run / run_layout.CONFIG_CHANGES_FILE).read_text().splitlines()]
    assert changes[-1]["changes"] == {"train.num_steps": [3, 1]}


def test_no_intact_checkpoint_refuses_to_start(killed_then_disk_full, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(killed_then_disk_full[0], run)
    for step in ("1", "2"):
        (run / "checkpoints" / step / "_CHECKPOINT_METADATA").unlink()
        shutil.rmtree(run / "checkpoints" / step / "integrity")
    with pytest.raises(checkpointer.CorruptCheckpointError, match="no intact checkpoint in .*checkpoints/2 is corrupt"):
        trainer.train_and_evaluate(tiny_config(3), str(run), PretrainingTask())
    assert [r["step"] for r in metrics.read_metrics(run / metrics.METRICS_FILE)] == [1, 2, 3]  # not restarted
    # The same command again finds only moved-aside steps: refused, nothing written.
    before = workdir_contents(run)
    with pytest.raises(checkpointer.CorruptCheckpointError) as info:
        trainer.train_and_evaluate(tiny_config(3), str(run), PretrainingTask())
    assert str(info.value) == (
        f"{run / 'checkpoints'} holds only checkpoints moved aside as corrupt (1.corrupt, 2.corrupt): refusing to "
        "start from step 0; to start over on purpose, move them out of the folder or pass "
        "--config.train.start_over_corrupt=True (they are kept either way)"
    )
    assert workdir_contents(run) == before
    # On purpose: a new run from step 0 beside the kept ones (the loop itself is not run: no compile).
    config = tiny_config(3)
    config.train.start_over_corrupt = True
    starts = []
    monkeypatch.setattr(trainer, "_loop", lambda run, start_step, *_: starts.append((start_step, int(run.state.step))))
    assert trainer.train_and_evaluate(config, str(run), PretrainingTask())["step"] == 0
    assert starts == [(0, 0)]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1.corrupt", "2.corrupt"]
    assert not (run / metrics.METRICS_FILE).exists() or not metrics.read_metrics(run / metrics.METRICS_FILE)
    kept = [p.read_bytes() for p in run.glob(f"{metrics.METRICS_FILE}.*.old")]
    assert before[metrics.METRICS_FILE] in kept  # the earlier run's records, moved aside byte for byte


def workdir_contents(run) -> dict:
    """Every path under `run` with its bytes (None for folders): a byte-for-byte listing. The lock file
    is listed by name only: each launch writes its holder (pid, host, start time) into it."""
    return {
        str(p.relative_to(run)): None if p.is_dir() or p.name == run_layout.LOCK_FILE else p.read_bytes()
        for p in sorted(run.rglob("*"))
    }


@pytest.mark.parametrize(
    "failure",
    [
        MemoryError("host memory"),
        ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2147483648 bytes."),
        OSError(errno.EIO, "Input/output error"),
    ],
    ids=["host_memory", "device_memory", "io_error"],
)
def test_a_restore_failing_for_another_reason_than_damage_changes_nothing(
    killed_then_disk_full, tmp_path, monkeypatch, failure
):
    """Out of memory on a smaller machine, an I/O error of a network mount: the error propagates as it
    was raised, every checkpoint stays where it was, the workdir and its metrics are byte for byte the
    same (so the same command resumes once the cause is gone)."""
    run = tmp_path / "run"
    shutil.copytree(killed_then_disk_full[0], run)
    # The save the full disk interrupted: orbax removes its temporary folder when a run starts.
    shutil.rmtree(run / "checkpoints" / "3.orbax-checkpoint-tmp")
    before = workdir_contents(run)

    def fails(self, *args, **kwargs):
        raise failure

    with monkeypatch.context() as patch:
        patch.setattr(checkpointer.ocp.CheckpointManager, "restore", fails)
        with pytest.raises(type(failure)) as info:
            trainer.train_and_evaluate(tiny_config(3), str(run), PretrainingTask())
    assert info.value is failure
    assert workdir_contents(run) == before


def test_reading_a_live_run_leaves_its_directory_alone(killed_then_disk_full, tmp_path, caplog):
    """`load_model` (evaluate's reader) beside a save in flight and a corrupt newest checkpoint: the
    temporary folder survives, nothing is moved, the newest intact checkpoint is read."""
    run = tmp_path / "run"
    shutil.copytree(killed_then_disk_full[0], run)
    checkpoints = run / "checkpoints"
    in_flight = checkpoints / "3.orbax-checkpoint-tmp-1795804535"
    (in_flight / "state").mkdir(parents=True)
    (in_flight / "state" / "partial").write_bytes(b"x" * 64)
    shutil.rmtree(checkpoints / "2" / "state")
    shutil.copytree(checkpoints / "1" / "state", checkpoints / "2" / "state")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    model = load_model(run)
    assert model.config.num_hidden_layers == 2
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    assert any("checkpoint" in m and "is corrupt" in m for m in caplog.messages)
    with pytest.raises(checkpointer.CorruptCheckpointError, match=f"checkpoint {checkpoints / '2'} is corrupt"):
        load_model(run, step=2)


def test_evaluating_a_corrupt_checkpoint_is_one_line(killed_then_disk_full, tmp_path, env):
    run = tmp_path / "run"
    shutil.copytree(killed_then_disk_full[0], run)
    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "2" / "state")
    shutil.copytree(checkpoints / "1" / "state", checkpoints / "2" / "state")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.evaluate",
            f"--checkpoint={run}",
            "--step=2",
            f"--output={tmp_path / 'eval'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"checkpoint {checkpoints / '2'} is corrupt: ")
    assert "Traceback" not in proc.stderr and (checkpoints / "2").is_dir()  # a reader moves nothing


def test_a_sweep_point_in_use_exits_with_one_line(tmp_path, env):
    # The sweep's first point is locked by another run: the sweep stops with the same one line.
    point = tmp_path / "num_codevector_groups=2,num_codevectors_per_group=8,seed=0"
    point.mkdir()
    with workdir.WorkdirLock(point):
        holder = (point / run_layout.LOCK_FILE).read_text().strip()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.sweep",
                "--config=experiments/configs/codebook_ablation.py:tiny",
                f"--workdir={tmp_path}",
                "--config.grid.model.num_codevector_groups=(2,)",
                "--config.grid.model.num_codevectors_per_group=(8,)",
                "--config.grid.train.seed=(0,)",
                "--compilation_cache=",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_TIMEOUT,
        )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"workdir {point} is in use by {holder}; wait for that run to end or use another --workdir"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "text, problem",
    [(NESTED_JSON, "JSON nested deeper"), ('[{"seed": 0}]', "expected a JSON object at the top level, found an array")],
)
def test_a_stored_config_that_is_no_json_object_is_one_line(tmp_path, text, problem):
    (tmp_path / run_layout.CONFIG_FILE).write_text(text)
    with pytest.raises(SystemExit) as info, run_faults_exit(tmp_path):
        workdir.prepare_config(tmp_path, {"seed": 0}, '{"seed": 0}', has_checkpoints=True)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / run_layout.CONFIG_FILE}: {problem}") and "\n" not in message
    assert message.endswith("the checkpoints can't be checked against it")


def test_run_faults_exit_turns_user_faults_into_one_line(tmp_path):
    for error, line in [
        (workdir.WorkdirLockedError("workdir w is in use"), "workdir w is in use"),
        (checkpointer.CorruptCheckpointError("corrupt checkpoint c"), "corrupt checkpoint c"),
        (trainer.TrainingDivergedError("stopping at step 3"), "training stopped: stopping at step 3"),
    ]:
        with pytest.raises(SystemExit) as info, run_faults_exit(tmp_path):
            raise error
        assert str(info.value) == line
    with pytest.raises(SystemExit) as info, run_faults_exit(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="a bug"), run_faults_exit(tmp_path):  # anything else propagates
        raise ValueError("a bug")
