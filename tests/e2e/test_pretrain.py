"""The launcher end to end: outputs, exact resume after SIGKILL (mid-run, mid-save), SIGTERM, divergence stop.

Every run is a subprocess of `python -m experiments.pretrain` on the tiny config (1 device, a few
steps of 4 x 1 s crops from the embedded corpus). Faults are injected by a small wrapper that patches
one function before running the launcher module (never by production hooks). The runs share a JAX
persistent compilation cache, so only the first one compiles.
"""

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from tests.support import HANG_TIMEOUT, REPO
from tests.support.imports import BLOCK_REFERENCE
from tests.support.launchers import run_main, shared_run, subprocess_env
from tests.support.states import whole_state_target
from w2v_jax import sharding
from w2v_jax.checkpoints import checkpointer, load_model
from w2v_jax.cli import convert_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.data import audio
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.training import metrics, optim, train_step

NUM_STEPS = 6
OVERRIDES = [
    "--config=experiments/configs/pretrain.py:tiny",
    f"--config.train.num_steps={NUM_STEPS}",
    "--config.train.batch_size=4",
    "--config.train.warmup_steps=2",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=2",
    "--config.train.eval_every=2",
    "--config.data.max_sample_size=16000",
    "--config.data.min_sample_size=16000",
]
# Wall-clock metrics differ between runs; everything else must be identical after a resume.
TIMING = metrics.RATE_FIELDS

# Runs the launcher after patching one function to inject a fault at step AT.
RUNNER = textwrap.dedent(
    """
    import os, runpy, signal, sys
    fault, at = sys.argv[1], int(sys.argv[2])
    sys.argv = ["experiments.pretrain"] + sys.argv[3:]

    if fault in ("kill_after_log", "sigterm_after_log"):
        from w2v_jax.training import metrics
        write = metrics.MetricWriter.write
        def patched(self, step, values):
            write(self, step, values)
            if step == at:
                os.kill(os.getpid(), signal.SIGKILL if fault == "kill_after_log" else signal.SIGTERM)
        metrics.MetricWriter.write = patched
    elif fault == "kill_during_save":
        import orbax.checkpoint._src.path.atomicity as atomicity
        finalize = atomicity.AtomicRenameTemporaryPath.finalize
        async def patched(self, *args, **kwargs):
            if self._final_path.name == str(at):  # step AT's files are written, not committed
                os.kill(os.getpid(), signal.SIGKILL)
            return await finalize(self, *args, **kwargs)
        atomicity.AtomicRenameTemporaryPath.finalize = patched
    elif fault == "disk_full_during_save":
        import errno
        import orbax.checkpoint._src.path.atomicity as atomicity
        finalize = atomicity.AtomicRenameTemporaryPath.finalize
        async def patched(self, *args, **kwargs):
            if self._final_path.name == str(at):  # what tensorstore raises when the disk fills
                raise ValueError(
                    f"RESOURCE_EXHAUSTED: Error writing local file {self._final_path}/state: "
                    "No space left on device [os_error_code=28]"
                )
            return await finalize(self, *args, **kwargs)
        atomicity.AtomicRenameTemporaryPath.finalize = patched
    elif fault == "nan_from_step":
        import numpy as np
        from w2v_jax.pretraining import task
        make = task.make_train_iterator
        class Poisoned:
            def __init__(self, inner):
                self.inner, self.count = inner, 0
            def __next__(self):
                batch = next(self.inner)
                self.count += 1
                if self.count >= at:
                    batch = dict(batch, input_values=np.full_like(batch["input_values"], np.nan))
                return batch
            def __getattr__(self, name):
                return getattr(self.inner, name)
        task.make_train_iterator = lambda *a, **k: Poisoned(make(*a, **k))
    runpy.run_module("experiments.pretrain", run_name="__main__")
    """
)


def launch(workdir, env, fault=None, at=0, extra=()):
    args = [f"--workdir={workdir}", *OVERRIDES, *extra]
    if fault is None:
        cmd = [sys.executable, "-m", "experiments.pretrain", *args]
    else:
        cmd = [sys.executable, "-c", RUNNER, fault, str(at), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT)


def records(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics.read_metrics(workdir / "metrics.jsonl")]


# Parameter counts of fairseq's BASE and LARGE (shared/REFERENCE.md).
@pytest.mark.parametrize(
    "variant,millions",
    [("tiny", None), ("small", None), ("base", 95.0), pytest.param("large", 317.4, marks=pytest.mark.slow)],
)
def test_every_variant_resolves_to_a_valid_model_and_schedule(variant, millions):
    config = pretrain_config.get_config(variant)
    model_config = Wav2Vec2Config.from_run_config(config)
    expected = Wav2Vec2Config.preset(variant)
    if variant == "tiny":  # trains like LARGE: see the config's comment
        expected = expected.replace(feature_penalty_weight=0.0, feature_grad_mult=1.0)
    assert model_config == expected
    t = config.train
    schedule = optim.learning_rate_schedule(
        t.learning_rate, t.num_steps, t.warmup_steps, t.lr_schedule, t.lr_end, t.lr_power
    )
    assert float(schedule(t.warmup_steps)) == pytest.approx(t.learning_rate, rel=1e-6)
    _, abstract, _ = train_step.abstract_train_state(
        model_config, optim.make_optimizer(), model_class=Wav2Vec2ForPreTraining, mesh=sharding.make_mesh()
    )
    num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    if millions is not None:
        assert num_params / 1e6 == pytest.approx(millions, rel=0.005)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="'huge'"):
        pretrain_config.get_config("huge")


# The installed command's module started outside the repository (its config path resolved from the
# package) on an install without torch.
INSTALLED_WITHOUT_TORCH = BLOCK_REFERENCE + textwrap.dedent(
    """
    import runpy
    sys.argv = ["w2v-pretrain"] + sys.argv[1:]
    runpy.run_module("w2v_jax.cli.pretrain", run_name="__main__")
    """
)


@pytest.fixture(scope="module")
def reference(session_dir, env):
    """An uninterrupted run, launched as `INSTALLED_WITHOUT_TORCH` from a folder outside the repository
    (once per session, `shared_run`): (its workdir, the launcher's stderr). Its metrics are what every
    interrupted-and-resumed run (`python -m experiments.pretrain` from the repository, torch installed)
    must log."""

    def build(folder):
        elsewhere = folder / "elsewhere"
        elsewhere.mkdir(parents=True)
        proc = subprocess.run(
            [sys.executable, "-c", INSTALLED_WITHOUT_TORCH, f"--workdir={folder / 'run'}", *OVERRIDES],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_TIMEOUT,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        (folder / "stderr.txt").write_text(proc.stderr)

    folder = shared_run(session_dir / "pretrain_reference", build)
    return folder / "run", (folder / "stderr.txt").read_text()


@pytest.mark.slow
def test_launcher_writes_every_output(reference):
    workdir, stderr = reference
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == NUM_STEPS and config["train"]["batch_size"] == 4
    assert config["model"]["hidden_size"] == 32 and config["data"]["max_sample_size"] == 16000
    logged = metrics.read_metrics(workdir / "metrics.jsonl")
    assert [r["step"] for r in logged] == list(range(1, NUM_STEPS + 1))
    required = {
        "loss",
        "contrastive_loss",
        "diversity_loss",
        "code_perplexity",
        "gumbel_temperature",
        "accuracy",
        "chance_accuracy",
        "learning_rate",
        "grad_norm",
        "skipped_nonfinite",
        "audio_seconds_per_second",
    }
    for r in logged:
        assert required <= set(r), required - set(r)
        assert np.isfinite(r["loss"]) and r["skipped_nonfinite"] == 0 and r["audio_seconds_per_second"] > 0
        assert any(k.startswith("data_skipped_") for k in r)
    assert logged[0]["learning_rate"] == 0.0 and logged[-1]["gumbel_temperature"] < 2.0
    # Validation every 2 steps, in the record of its step (never a line of its own).
    assert [r["step"] for r in logged if "valid_loss" in r] == [2, 4, 6]
    assert all(np.isfinite(r["valid_loss"]) and 0 <= r["valid_accuracy"] <= 1 for r in logged if "valid_loss" in r)
    # The real chance level: at least 1 / (1 + K), K = 4 distractors.
    assert all(0.2 <= r["chance_accuracy"] <= 1 for r in logged)
    assert all(0.2 <= r["valid_chance_accuracy"] <= 1 for r in logged if "valid_loss" in r)
    assert len({r["valid_num_masked"] for r in logged if "valid_loss" in r}) == 1  # the same fixed masks
    assert list(workdir.glob("events.out.tfevents.*"))
    assert (workdir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4, 6]
    assert "pretrain: 100%" in stderr  # the tqdm bar
    assert "compiling the train step (#1)" in stderr and "(#2)" not in stderr
    assert stderr.count("compiling the validation step") == 1  # one crop length: one compile


@pytest.mark.slow
def test_launcher_runs_from_another_directory_without_torch(reference):
    """The reference run came from the installed command's module outside the repository, torch blocked
    (`INSTALLED_WITHOUT_TORCH`); the resumed runs below, from the repository with torch, log its records."""
    workdir, stderr = reference
    assert "finished at step 6 of 6" in stderr  # the readable end-of-run summary
    assert [r["step"] for r in records(workdir)] == list(range(1, NUM_STEPS + 1))


@pytest.mark.slow
def test_workdir_exports_to_a_folder_transformers_loads(reference, tmp_path):
    """`convert_checkpoint jax-to-hf WORKDIR --step`: transformers' from_pretrained, AutoFeatureExtractor
    and pipelines load the folder, and give our model's features at that step."""

    workdir, _ = reference
    run_main(convert_checkpoint, ["jax-to-hf", str(workdir), str(tmp_path / "hf"), "--step=4"])
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "hf")
    hf_model = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").eval()
    ours = load_model(workdir, step=4)
    raw = 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32) + 0.02
    inputs = extractor(raw, sampling_rate=16_000, return_tensors="pt")
    # The extractor normalises as the training pipeline does (float32 vs float64 statistics).
    np.testing.assert_allclose(inputs.input_values[0].numpy(), audio.normalize(raw), atol=1e-5)
    with torch.no_grad():
        expected = hf_model.wav2vec2(inputs.input_values).last_hidden_state[0].numpy()
    got = ours.features([audio.normalize(raw)])[0].last_hidden_state
    np.testing.assert_allclose(got, expected, atol=1e-5)  # parity tests measure ~1e-6
    # A pipeline starts from the folder (its classification head is new, the usual fine-tuning start).
    pipe = transformers.pipeline("audio-classification", model=str(tmp_path / "hf"))
    assert pipe.feature_extractor.do_normalize and len(pipe(raw)) == 2
    newest = load_model(workdir).features([audio.normalize(raw)])[0]
    assert np.abs(newest.last_hidden_state - got).max() > 1e-3  # step 4, not the newest (6)


@pytest.mark.slow
def test_rerun_of_a_finished_run_does_nothing(reference, env, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    before = (workdir / "metrics.jsonl").read_text()
    proc = launch(workdir, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from checkpoint 6 " in proc.stderr
    assert (workdir / "metrics.jsonl").read_text() == before


# Killed after logging step 5, checkpoint 4's asynchronous save may or may not have been committed.
@pytest.mark.slow
@pytest.mark.parametrize("fault,at,resumed_from", [("kill_after_log", 5, (2, 4)), ("kill_during_save", 4, (2,))])
def test_sigkill_then_restart_logs_what_an_uninterrupted_run_logs(reference, env, tmp_path, fault, at, resumed_from):
    killed = launch(tmp_path, env, fault, at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    if fault == "kill_during_save":
        assert any(".orbax-checkpoint-tmp" in p.name for p in (tmp_path / "checkpoints").iterdir())
    resumed = launch(tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert any(f"resumed from checkpoint {step} " in resumed.stderr for step in resumed_from)
    assert records(tmp_path) == records(reference[0])


@pytest.mark.slow
def test_a_run_on_shards_logs_the_manifest_runs_metrics_and_resumes_exactly(reference, embedded_shards, env, tmp_path):
    """The reference run's corpus as shard sets (train and validation): killed after step 5, restarted,
    it logs what the run on the manifests logged."""
    shards = [
        f"--config.data.train_manifest={embedded_shards / 'train'}",
        f"--config.data.valid_manifest={embedded_shards / 'valid'}",
    ]
    killed = launch(tmp_path, env, "kill_after_log", 5, shards)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = launch(tmp_path, env, extra=shards)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert any(f"resumed from checkpoint {step} " in resumed.stderr for step in (2, 4))
    assert records(tmp_path) == records(reference[0])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(reference, env, tmp_path):
    stopped = launch(tmp_path, env, "sigterm_after_log", 3)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "SIGTERM: checkpoint 3 saved" in stopped.stderr
    assert 3 in [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3]
    resumed = launch(tmp_path, env)
    assert resumed.returncode == 0 and "resumed from checkpoint 3 " in resumed.stderr
    assert records(tmp_path) == records(reference[0])


@pytest.mark.slow
def test_disk_full_is_one_line_and_the_committed_checkpoints_resume(reference, env, tmp_path):
    full = launch(tmp_path, env, "disk_full_during_save", 4)
    assert full.returncode == 1
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(f"no space left on device writing {tmp_path} (") and "MiB free)" in last
    assert "Traceback" not in full.stderr
    assert "No space left on device" not in full.stderr  # orbax's per-thread error lines are dropped
    resumed = launch(tmp_path, env)
    assert resumed.returncode == 0 and "resumed from checkpoint 2 " in resumed.stderr
    assert records(tmp_path) == records(reference[0])


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_and_resumes_exactly(reference, env, tmp_path):
    """The finished reference run with checkpoint 6's largest array file cut short: run again, the
    launcher reports it in one line, moves it aside, resumes from 4 and logs what the reference logged."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    damaged = max((workdir / "checkpoints" / "6" / "state").rglob("*"), key=lambda p: p.stat().st_size)
    damaged.write_bytes(damaged.read_bytes()[:40])
    proc = launch(workdir, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint {workdir / 'checkpoints' / '6'} is corrupt or incomplete" in proc.stderr
    assert "falling back to checkpoint 4" in proc.stderr and "resumed from checkpoint 4 " in proc.stderr
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    assert (workdir / "checkpoints" / "6.corrupt").is_dir()
    assert records(workdir) == records(reference[0])


@pytest.mark.slow
def test_consecutive_nonfinite_updates_stop_the_run(env, tmp_path):
    """Batches from the 4th on are NaN: skipped, counted, then the run stops; checkpoint 2 stays good."""
    proc = launch(tmp_path, env, "nan_from_step", 4, extra=["--config.train.max_consecutive_nonfinite=2"])
    assert proc.returncode != 0
    assert "consecutive updates had a non-finite loss or gradient" in proc.stderr
    logged = metrics.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["skipped_nonfinite"] for r in logged] == [0, 0, 0, 1, 1]
    assert logged[3]["loss"] is None and logged[3]["nonfinite_total"] == 1
    ckpt = checkpointer.Checkpointer(tmp_path / "checkpoints")
    assert ckpt.all_steps() == [2, 4]  # 4's update was skipped: its parameters are step 3's, finite
    ckpt.close()


def free_port() -> int:

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch_two_processes(workdir, env, extra=()):
    """The launcher as two processes on localhost; their (stdout, stderr) after both exited 0."""
    address = f"localhost:{free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.pretrain",
                f"--workdir={workdir}",
                *OVERRIDES,
                *extra,
                f"--config.distributed.coordinator_address={address}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=HANG_TIMEOUT) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return outputs


def assert_same_run(logged, expected):
    """The records of two runs on different topologies: the same global batches and masks (counts
    equal), the same values up to float summation order (rtol 1e-4, as on 1 or 8 devices)."""
    assert [r["step"] for r in logged] == [r["step"] for r in expected]
    for a, b in zip(logged, expected):
        assert a["num_masked"] == b["num_masked"]  # same global batches, same masks
        assert ("valid_loss" in a) == ("valid_loss" in b)
        names = ("loss", "contrastive_loss", "diversity_loss", "accuracy", "code_perplexity", "grad_norm")
        for name in names + (("valid_loss", "valid_accuracy") if "valid_loss" in b else ()):
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, err_msg=f"step {a['step']} {name}")


@pytest.fixture(scope="module")
def two_processes(session_dir, env):
    """The reference's run as two processes (jax.distributed on localhost, CPU collectives, each process
    feeding half of every global batch), once per session: (its workdir, process 1's stderr)."""

    def build(folder):
        outputs = launch_two_processes(folder / "run", env)
        (folder / "stderr_1.txt").write_text(outputs[1][1])

    folder = shared_run(session_dir / "pretrain_two_processes", build)
    return folder / "run", (folder / "stderr_1.txt").read_text()


@pytest.mark.slow
def test_two_processes_match_the_single_process_run(reference, two_processes):
    workdir, stderr_1 = two_processes
    assert "process 1 of 2" in stderr_1
    assert_same_run(records(workdir), records(reference[0]))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4, 6]


@pytest.mark.slow
def test_a_two_process_checkpoint_continues_on_one_process(reference, two_processes, env, tmp_path):
    """2 processes -> 1 from the two-process run's checkpoint 2: the data position is global, the state
    resharded, the records those of the uninterrupted single-process run."""
    workdir = tmp_path / "run"
    shutil.copytree(two_processes[0], workdir)
    # As if stopped after step 2's checkpoint: steps 3-6 can only come from the one-process run.
    for step in (4, 6):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    metrics.truncate_after(workdir / "metrics.jsonl", 2)
    resumed = launch(workdir, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint 2 was written by 2 processes, this run has 1" in resumed.stderr
    assert "resumed from checkpoint 2" in resumed.stderr and "finished at step 6 of 6" in resumed.stderr
    assert_same_run(records(workdir), records(reference[0]))


@pytest.mark.slow
def test_a_two_process_checkpoint_loads_its_model_on_one_process(two_processes):
    """`load_model` of a checkpoint both processes wrote, in one process: the parameters alone, the
    same as in the whole state a one-process resume restores."""
    workdir = two_processes[0]
    model = load_model(workdir, step=2)
    reader = checkpointer.Checkpointer(workdir / "checkpoints", read_only=True)
    state, _ = reader.restore(2, whole_state_target(workdir))
    reader.close()
    loaded = jax.tree.leaves(nnx.state(model, nnx.Param))
    for a, b in zip(loaded, jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# The same global batch on 4 and 8 devices: a token budget of 8 one-second crops.
TOPOLOGY = ["--config.train.num_steps=4", "--config.data.max_tokens=128000", "--config.train.eval_every=0"]


@pytest.mark.slow
def test_resume_on_another_device_count_continues_as_a_run_on_it(compilation_cache, tmp_path):
    """8 -> 4 and 4 -> 8 simulated devices: orbax reshards the state, the records continue as the
    uninterrupted run on the new device count logs them."""
    runs = {}
    for devices in (8, 4):
        runs[devices] = tmp_path / f"{devices}_devices"
        result = launch(runs[devices], subprocess_env(compilation_cache, devices), extra=TOPOLOGY)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "token budget max_tokens=128000: global batches (rows x samples) 8 x 16000" in result.stderr
    for before, after in ((8, 4), (4, 8)):
        workdir = tmp_path / f"{before}_to_{after}"
        shutil.copytree(runs[before], workdir)
        shutil.rmtree(workdir / "checkpoints" / "4")  # as if stopped after step 2's checkpoint
        result = launch(workdir, subprocess_env(compilation_cache, after), extra=TOPOLOGY)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "resumed from checkpoint 2" in result.stderr
        assert_same_run(records(workdir), records(runs[after]))
    # On 3 devices the same budget rounds to 6 rows: another global batch, refused in one line.
    workdir = tmp_path / "8_to_3"
    shutil.copytree(runs[8], workdir)
    result = launch(workdir, subprocess_env(compilation_cache, 3), extra=TOPOLOGY)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "the global batch changed since this state was saved (rows per bucket [8] then, [6] now" in last_line
