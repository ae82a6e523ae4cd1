"""The training loop: `train_and_evaluate(config, workdir, task)`.

One loop for every task: pretraining (`pretraining.task.PretrainingTask`), CTC fine-tuning
(`asr.task.FineTuningTask`) or any other. A `Task` says what differs: the model and its config, the step's objective
and optimizer, the initial parameters, the input pipeline, the validation, how a logging window reduces its metrics
and which the progress bar shows (`metrics.MetricRoles`), the failure detectors that watch it (`health`), the
end-of-run summary's figures and plot. Resume, checkpoints, SIGTERM, non-finite skips, metrics and TensorBoard are
the loop's, shared; the loop names no metric of any task.

Restarting the same command on the same workdir resumes from the newest complete checkpoint:
parameters, optimizer state, step, counters, PRNG key, every process's data-iterator position and
the metrics of the logging window in progress all come back, and `metrics.jsonl` lines logged
after that checkpoint are dropped, so the resumed run logs exactly what an uninterrupted run logs
(same device count). SIGTERM (preemption) saves a checkpoint at the next step and returns.

Every `train.eval_every` updates the run is validated (the task's `evaluation.Evaluator`): the values
join that step's logged record as `valid_*` keys. Validation uses no training randomness and no iterator, so
it changes nothing a resume replays.

Outputs in `workdir`: `config.json` (the resolved config), `metrics.jsonl` + TensorBoard events,
`checkpoints/<step>/`, `loss_curve.png` at the end; a tqdm bar with ETA on the console.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pathlib
import signal
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from w2v_jax import sharding
from w2v_jax.checkpoints.checkpointer import (
    Checkpointer,
    CorruptCheckpointError,
    abstract_like,
    corrupt_checkpoints,
    has_checkpoints,
)
from w2v_jax.checkpoints.run_layout import CHECKPOINTS_DIR
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.data.pipeline import TrainIterator
from w2v_jax.training import compute, distributed, evaluation, health, metrics, train_step
from w2v_jax.training.workdir import ConfigChangedError, WorkdirLock, prepare_config, start_metrics_file

logger = logging.getLogger(__name__)

# The train step's own metrics, beside the task's: whether the update was skipped (summed over a
# logging window) and the skip counters, states the window keeps the last of.
# The loop's own per-step values: `audio_samples` (real samples of the global batch) and `model_flops`
# (`compute.py`) are summed over a window, then turned into the record's compute fields.
_STEP_ROLES = metrics.MetricRoles(
    summed=("skipped_nonfinite", "audio_samples", "model_flops"), last=("nonfinite_total", "nonfinite_consecutive")
)


class TrainingDivergedError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


class UnhealthyRunError(TrainingDivergedError):
    """`train.health = "stop"` and a failure condition holds (`health`); that step's checkpoint is saved."""


def _precision_dtype(precision: str) -> jnp.dtype | None:
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return jnp.bfloat16
    raise ValueError(f"train.precision must be 'float32' or 'bfloat16', got {precision!r}")


def _validate(config: ml_collections.ConfigDict) -> None:
    """Eager checks of the settings the loop relies on (the model config checks itself)."""
    t = config.train
    positive = (
        "batch_size",
        "num_steps",
        "log_every",
        "checkpoint_every",
        "grad_accum_steps",
        "max_consecutive_nonfinite",
    )
    for name in positive:
        if not isinstance(t[name], int) or t[name] < 1:
            raise ValueError(f"train.{name} must be a positive int, got {t[name]!r}")
    eval_every = t.get("eval_every", 0)
    if not isinstance(eval_every, int) or eval_every < 0 or eval_every % t.log_every:
        raise ValueError(
            f"train.eval_every must be 0 (off) or a multiple of train.log_every={t.log_every} (validation values "
            f"go into the record of a logged step), got {eval_every!r}"
        )
    if t.get("health", "off") not in health.MODES:
        raise ValueError(f"train.health must be one of {health.MODES}, got {t.health!r}")
    if config.data.min_sample_size > config.data.max_sample_size:
        raise ValueError(
            f"data.min_sample_size={config.data.min_sample_size} > data.max_sample_size={config.data.max_sample_size}"
        )
    if config.data.get("max_tokens", 0):
        return  # a token budget's pipeline makes its batch sizes divisible (`pretraining.task.token_batch_multiple`)
    num_devices = jax.device_count()
    if t.batch_size % (num_devices * t.grad_accum_steps):
        raise ValueError(
            f"train.batch_size={t.batch_size} must be divisible by the number of devices ({num_devices}) "
            f"times train.grad_accum_steps ({t.grad_accum_steps})"
        )
    if t.batch_size % jax.process_count():
        raise ValueError(f"train.batch_size={t.batch_size} must be divisible by the {jax.process_count()} processes")


def _host_window(window: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The window's per-step metrics as JSON-able host values (NaN and infinity -> None).

    Entries are device arrays (steps of this process) or plain values (restored from a checkpoint).
    """
    host = []
    for step_metrics in jax.device_get(window):
        values = {k: v.item() if hasattr(v, "item") else v for k, v in step_metrics.items()}
        host.append({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()})
    return host


def _summarize(window: list[dict[str, Any]], roles: metrics.MetricRoles) -> dict[str, Any]:
    """One logged record from a window of per-step host metrics: the step's and the task's (`roles`)."""
    # The task's metrics have them (a window restored from an older checkpoint may lack a newer one).
    ratios = {k: v for k, v in roles.ratios.items() if any(v[0] in m or k in m for m in window)}
    last = [k for k in _STEP_ROLES.last + roles.last if k in window[-1]]
    averaged = metrics.mean_metrics(
        [{k: v for k, v in m.items() if k not in last} for m in window],
        summed=_STEP_ROLES.summed + roles.summed,
        ratios=ratios,
    )
    return {**averaged, **{k: window[-1][k] for k in last}}


class Task(Protocol):
    """What a kind of training run plugs into the loop (see the module docstring).

    Attributes:
      name: the progress bar's label.
      model_class: the model `train_step.create_train_state` builds.
      metric_roles: how a logging window reduces the objective's per-step metrics (summed, ratios,
        states), and which of them and of the validation values the progress bar shows.
    """

    # Read-only (properties): tasks hold them as class constants.
    @property
    def name(self) -> str: ...

    @property
    def model_class(self) -> train_step.ModelClass: ...

    @property
    def metric_roles(self) -> metrics.MetricRoles: ...

    def prepare(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, *, primary: bool) -> None:
        """Called once the workdir is locked and its config checked, before anything else."""
        ...

    def model_config(self, config: ml_collections.ConfigDict) -> Wav2Vec2Config: ...

    def optimizer_and_hyperparams(
        self, config: ml_collections.ConfigDict
    ) -> tuple[Any, train_step.StepHyperparams]: ...

    def initial_state(self, state: train_step.TrainState) -> train_step.TrainState:
        """The state of a fresh run (not a resume): e.g. pretrained parameters put in."""
        ...

    def data_iterator(
        self, config: ml_collections.ConfigDict, *, batch_size: int, shard_index: int, shard_count: int
    ) -> TrainIterator: ...

    def make_evaluator(
        self, config: ml_collections.ConfigDict, graphdef: Any, mesh: jax.sharding.Mesh, state_shardings: Any
    ) -> evaluation.Evaluator:
        """The validation run every `train.eval_every` updates."""
        ...

    def detectors(self, config: ml_collections.ConfigDict) -> Sequence[health.Detector]:
        """The failure conditions watched when `train.health` is on, with their settings, in the
        order they are reported (new objects for each run: `health.Detector`)."""
        ...

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        """The end-of-run summary's lines on what the run measured (`train_and_evaluate`'s summary)."""
        ...

    def plot(self, records: list[dict[str, Any]], workdir: pathlib.Path) -> None: ...


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, task: Task) -> dict[str, Any]:
    """Runs or resumes a training run (see the module docstring).

    Args:
      config: the task's run config (`w2v_jax/configs/pretrain.py` for pretraining, `finetune.py`
        for fine-tuning).
      workdir: the run's directory (created if missing).
      task: what is trained (`pretraining.task.PretrainingTask()`, `asr.task.FineTuningTask()`, ...);
        its evaluator is built when `train.eval_every > 0` and called every `eval_every` updates.

    Returns:
      a summary: final step, last logged metrics, number of compiles, checkpoint steps.

    Raises:
      TrainingDivergedError: after `train.max_consecutive_nonfinite` skipped updates in a row (the
        newest checkpoint, finite by construction, is kept).
      workdir.WorkdirLockedError: another run holds the workdir (nothing is touched).
      workdir.ConfigChangedError: a resume changes fields its checkpoints depend on (nothing written).
      checkpointer.CorruptCheckpointError: checkpoints exist but none is intact (moved aside), or a
        relaunch finds only moved-aside ones and `train.start_over_corrupt` is off (nothing written).
    """
    d = config.distributed
    distributed.initialize(d.coordinator_address, d.num_processes, d.process_id)
    _validate(config)
    # The lock comes before anything reads or writes the workdir; process 0 holds it for all.
    with WorkdirLock(workdir, enabled=distributed.is_primary()):
        return _train_locked(config, pathlib.Path(workdir), task)


@dataclasses.dataclass
class _Run:
    """What a run builds before its first update, and what it carries from step to step."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    task: Task
    state: train_step.TrainState
    step_fn: train_step.TrainStep
    evaluator: evaluation.Evaluator | None
    data_iter: TrainIterator
    checkpointer: Checkpointer
    key_data: np.ndarray
    window: list[dict[str, Any]]
    totals: compute.Totals

    def host_record(self) -> dict[str, Any]:
        """What a checkpoint keeps beside the state: every process's data position, the key, the window,
        the compute totals through the last logged record."""
        return {
            "data_iterators": distributed.allgather_json(self.data_iter.get_state()),
            "rng": self.key_data.tolist(),
            "window": _host_window(self.window),
            "totals": self.totals.to_json(),
        }

    def save(self, step: int) -> None:
        self.checkpointer.save(step, self.state, self.host_record())


def _set_up(config: ml_collections.ConfigDict, workdir_path: pathlib.Path, task: Task) -> _Run:
    """The model, train state, compiled step, evaluator, data iterator and checkpointer of a fresh run."""
    t = config.train
    model_config = task.model_config(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    optimizer, hparams = task.optimizer_and_hyperparams(config)
    graphdef, state, state_shardings = train_step.create_train_state(
        model_config,
        optimizer,
        seed=t.seed,
        mesh=mesh,
        param_sharding=config.mesh.param_sharding,
        min_fsdp_size=config.mesh.fsdp_min_size,
        dtype=_precision_dtype(t.precision),
        remat=t.remat,
        model_class=task.model_class,
    )
    step_fn = train_step.TrainStep(graphdef, optimizer, hparams, mesh, state_shardings)
    evaluator = task.make_evaluator(config, graphdef, mesh, state_shardings) if t.get("eval_every", 0) else None
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    logger.info("model: %.2fM parameters; mesh %s", num_params / 1e6, dict(mesh.shape))
    process_index, process_count = jax.process_index(), jax.process_count()
    data_iter = task.data_iterator(
        config, batch_size=t.batch_size // process_count, shard_index=process_index, shard_count=process_count
    )
    checkpoints = Checkpointer(
        workdir_path / CHECKPOINTS_DIR, keep=t.keep_checkpoints, async_save=t.async_checkpointing
    )
    key_data = np.asarray(jax.random.key_data(jax.random.key(t.seed)))
    return _Run(
        config, workdir_path, task, state, step_fn, evaluator, data_iter, checkpoints, key_data, [], compute.Totals()
    )


def _resume_or_start(run: _Run) -> None:
    """Restores the newest intact checkpoint into `run`, or starts a fresh run (task's initial
    state, a clean metrics file)."""
    primary = distributed.is_primary()
    restored = run.checkpointer.restore_newest_intact(abstract_like(run.state))
    if restored is None:
        run.state = run.task.initial_state(run.state)
        if primary:
            start_metrics_file(run.workdir / metrics.METRICS_FILE)
        return
    latest, run.state, host = restored
    # The data position is global: a run on another number of processes (or devices, with orbax
    # resharding the state) continues where the saved run was, if the global batch is the same.
    written_by = len(host["data_iterators"])
    if written_by != jax.process_count():
        logger.info(
            "checkpoint %d was written by %d processes, this run has %d", latest, written_by, jax.process_count()
        )
    try:
        run.data_iter.restore_global(host["data_iterators"])
    except ValueError as error:
        raise ConfigChangedError(f"checkpoint {latest} in {run.checkpointer.directory}: {error}") from None
    run.key_data = np.asarray(host["rng"], np.uint32)
    run.window = host["window"]
    # A checkpoint written before runs counted their compute restarts the count at its step.
    run.totals = compute.Totals.from_json(host.get("totals"))
    if primary:
        metrics.truncate_after(run.workdir / metrics.METRICS_FILE, latest)
    logger.info("resumed from checkpoint %d in %s", latest, run.checkpointer.directory)


@contextlib.contextmanager
def _preemption_requests() -> Iterator[dict[str, bool]]:
    """SIGTERM (preemption) sets `flag` of the yielded dict, acted on between two steps, never inside
    one; the previous handler comes back on exit. Multi-process runs use JAX's preemption sync points."""
    requested = {"flag": False}

    def on_sigterm(signum, frame):
        del signum, frame
        requested["flag"] = True

    previous = signal.signal(signal.SIGTERM, on_sigterm) if jax.process_count() == 1 else None
    try:
        yield requested
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _LoggingWindow:
    """The steps since the last logged record: their metrics (the audio and FLOPs of each among them),
    their time (compiles left out), and the run's compute totals through the last record."""

    def __init__(
        self,
        steps: list[dict[str, Any]],
        step_fn: train_step.TrainStep,
        roles: metrics.MetricRoles,
        totals: compute.Totals,
        peak: float | None,
    ):
        self.steps = steps  # a resumed run's window continues the checkpointed one
        self._step_fn = step_fn
        self._roles = roles
        self.totals = totals
        self._peak = peak
        self._timed_from = len(steps)  # the steps timed here: a restored window's ran before the restart
        self._start = time.perf_counter()
        self._compile = step_fn.compile_seconds

    def record(self) -> dict[str, Any]:
        """The window's logged record (throughputs and compute fields included), then a new window."""
        host = _host_window(self.steps)
        record = _summarize(host, self._roles)
        elapsed = time.perf_counter() - self._start - (self._step_fn.compile_seconds - self._compile)
        # Totals count every step of the window; rates only those timed here.
        record.update(self.totals.add(record.pop("audio_samples", 0) / SAMPLE_RATE, record.pop("model_flops", 0.0)))
        timed = host[self._timed_from :]
        seconds = max(elapsed, 1e-9)
        record["audio_seconds_per_second"] = sum(m["audio_samples"] for m in timed) / SAMPLE_RATE / seconds
        record["steps_per_second"] = len(timed) / seconds
        record["flops_per_second"] = sum(m["model_flops"] for m in timed) / seconds
        if self._peak:
            record["mfu"] = record["flops_per_second"] / self._peak
        self.steps, self._timed_from = [], 0
        self._start, self._compile = time.perf_counter(), self._step_fn.compile_seconds
        return record


def _refuse_start_over(config: ml_collections.ConfigDict, directory: pathlib.Path) -> None:
    """Raises CorruptCheckpointError (before anything is written) when `directory` holds checkpoints
    moved aside as corrupt and no other, unless `train.start_over_corrupt`: a relaunch after every
    checkpoint was found corrupt must not silently train from step 0."""
    corrupt = corrupt_checkpoints(directory)
    if corrupt and not has_checkpoints(directory) and not config.train.start_over_corrupt:
        raise CorruptCheckpointError(
            f"{directory} holds only checkpoints moved aside as corrupt ({', '.join(corrupt)}): refusing to start "
            "from step 0; to start over on purpose, move them out of the folder or pass "
            "--config.train.start_over_corrupt=True (they are kept either way)"
        )


def _train_locked(config: ml_collections.ConfigDict, workdir_path: pathlib.Path, task: Task) -> dict[str, Any]:
    """`train_and_evaluate` once the workdir is locked: set-up, resume, the loop, the summary."""
    primary = distributed.is_primary()
    _refuse_start_over(config, workdir_path / CHECKPOINTS_DIR)
    workdir_path.mkdir(parents=True, exist_ok=True)
    prepare_config(
        workdir_path,
        config.to_dict(),
        config.to_json_best_effort(indent=2, sort_keys=True),
        has_checkpoints=has_checkpoints(workdir_path / CHECKPOINTS_DIR),
        write=primary,
    )
    task.prepare(config, workdir_path, primary=primary)
    run = _set_up(config, workdir_path, task)
    _resume_or_start(run)
    start_step = int(run.state.step)

    writer = metrics.MetricWriter(
        workdir_path, enabled=primary, config=config.to_json_best_effort(indent=2, sort_keys=True)
    )
    # smoothing=0: the rate is steps done / time since the start, and the start is moved forward by
    # every compile and evaluation (`_exclude_from_eta`), so the ETA counts training steps only.
    progress = tqdm.tqdm(
        total=config.train.num_steps,
        initial=start_step,
        disable=not primary,
        dynamic_ncols=True,
        desc=task.name,
        smoothing=0,
    )
    outcome = {"step": start_step, "last_logged": {}, "last_valid": {}, "eval_seconds": 0.0}
    monitor = _health_monitor(config, workdir_path, start_step, task)
    try:
        with _preemption_requests() as preemption:
            _loop(run, start_step, writer, progress, preemption, outcome, monitor)
    finally:
        progress.close()
        writer.close()
        run.data_iter.close()
        run.checkpointer.close()  # waits for the save in progress
        checkpoint_steps = run.checkpointer.all_steps()

    step = outcome["step"]
    if primary and config.train.plot and step == config.train.num_steps:
        task.plot(metrics.read_metrics(workdir_path / metrics.METRICS_FILE), workdir_path)
    summary = {
        "step": step,
        "num_steps": config.train.num_steps,
        "last_logged": outcome["last_logged"],
        "last_valid": outcome["last_valid"],
        "num_compiles": run.step_fn.num_compiles,
        "compile_seconds": run.step_fn.compile_seconds,
        "eval_seconds": outcome["eval_seconds"],
        "checkpoint_steps": checkpoint_steps,
        "data": run.data_iter.summary(),
    }
    if monitor is not None:
        summary["health"] = monitor.summary()
    if primary:
        logger.info("%s", format_summary(summary, workdir_path, task))
    return summary


def _health_monitor(
    config: ml_collections.ConfigDict, workdir_path: pathlib.Path, start_step: int, task: Task
) -> health.HealthMonitor | None:
    """The task's failure detectors under `train.health` (None when "off"), having seen the records a
    resumed run kept (every process reads them, so all agree on a stop)."""
    t = config.train
    if t.get("health", "off") == "off":
        return None
    monitor = health.HealthMonitor(task.detectors(config), window=t.get("health_window", 3))
    path = workdir_path / metrics.METRICS_FILE
    if start_step and path.exists():
        monitor.replay([r for r in metrics.read_metrics(path) if r["step"] <= start_step])
    return monitor


def _loop(
    run: _Run,
    start_step: int,
    writer: metrics.MetricWriter,
    progress: tqdm.tqdm,
    preemption: dict[str, bool],
    outcome: dict[str, Any],
    monitor: health.HealthMonitor | None,
) -> None:
    """The updates from `start_step` to `train.num_steps` (or a preemption); logged records,
    validation and checkpoints on their schedules. `outcome` holds the step reached and the last
    logged and validation values, also when an error ends the loop."""
    t = run.config.train
    process_count = jax.process_count()
    key = jax.random.wrap_key_data(jnp.asarray(run.key_data))
    roles = run.task.metric_roles
    window = _LoggingWindow(run.window, run.step_fn, roles, run.totals, compute.peak_flops(t.precision))
    eval_every = t.get("eval_every", 0)
    previous_metrics = None
    step = start_step
    while step < t.num_steps:
        # --- one update ---
        local = next(run.data_iter)
        # One batch size, or with a token budget one per bucket length (one compile each).
        rows = run.data_iter.rows_for_length(local["input_values"].shape[1])
        train_step.check_batch(local, rows // process_count)
        batch = {
            k: jax.make_array_from_process_local_data(run.step_fn.batch_sharding, v, (rows, *v.shape[1:]))
            for k, v in local.items()
        }
        compiled_before = run.step_fn.compile_seconds
        run.state, device_metrics = run.step_fn(run.state, batch, key)
        step_metrics: dict[str, Any] = {
            **device_metrics,
            "audio_samples": _real_samples(batch),
            "model_flops": run.step_fn.flops(batch),
        }
        _exclude_from_eta(progress, run.step_fn.compile_seconds - compiled_before)
        step += 1
        outcome["step"] = step
        window.steps.append(step_metrics)
        run.window = window.steps
        # Read the previous step's skip counter, not this one's: one step stays in flight.
        skipped_in_a_row = 0 if previous_metrics is None else int(previous_metrics["nonfinite_consecutive"])
        if skipped_in_a_row >= t.max_consecutive_nonfinite:
            raise TrainingDivergedError(
                f"stopping at step {step - 1}: {skipped_in_a_row} consecutive updates had a non-finite "
                f"loss or gradient (train.max_consecutive_nonfinite={t.max_consecutive_nonfinite}); the "
                f"newest checkpoint, step {run.checkpointer.latest_step()} in {run.checkpointer.directory}, is "
                "finite and kept. Lower train.learning_rate or check the data."
            )
        previous_metrics = step_metrics
        progress.update(1)

        # --- the logged record, with validation on its schedule ---
        if step % t.log_every == 0 or step == t.num_steps:
            record = window.record()
            run.window = window.steps
            skips = distributed.allgather_json(run.data_iter.skip_counts())  # each process sees its rows
            record.update({f"data_skipped_{k}": sum(p[k] for p in skips) for k in skips[0]})
            record.update({f"data_share_{k}": v for k, v in run.data_iter.corpus_shares().items()})
            if run.evaluator is not None and step % eval_every == 0:
                eval_start = time.perf_counter()
                values = run.evaluator(run.state, step)
                record.update(evaluation.prefixed(values))
                outcome["last_valid"] = {"step": step, **values}
                outcome["eval_seconds"] += time.perf_counter() - eval_start
                _exclude_from_eta(progress, time.perf_counter() - eval_start)
            findings = [] if monitor is None else monitor.observe({"step": step, **record})
            if findings:
                record[health.RECORD_FIELD] = [f.name for f in findings]
                for finding in findings:
                    if finding.started:
                        logger.warning("%s", finding.line(step))
            writer.write(step, record)
            outcome["last_logged"] = {"step": step, **record}
            if findings and t.get("health") == "stop":
                run.save(step)
                run.checkpointer.wait()
                saved = f"checkpoint {step} saved in {run.checkpointer.directory}"
                raise UnhealthyRunError(f"train.health=stop: {findings[0].line(step)}; {saved}")
            last_valid = outcome["last_valid"]
            postfix = {label: f"{record[name]:.3f}" for name, label in roles.progress.items() if name in record}
            postfix.update(
                {label: f"{last_valid[name]:.3f}" for name, label in roles.valid_progress.items() if name in last_valid}
            )
            progress.set_postfix(postfix)

        # --- checkpoints, and the stop a preemption asks for ---
        stop = preemption["flag"] if process_count == 1 else multihost_utils.reached_preemption_sync_point(step)
        if step % t.checkpoint_every == 0 or step == t.num_steps or stop:
            run.save(step)
        if stop:
            logger.warning("SIGTERM: checkpoint %d saved, stopping", step)
            break


def _real_samples(batch: dict[str, jax.Array]) -> jax.Array:
    """The global batch's real (unpadded) samples: a device scalar, read with the window."""
    mask = batch.get("attention_mask")
    return jnp.sum(mask, dtype=jnp.int32) if mask is not None else jnp.asarray(batch["input_values"].size, jnp.int32)


def _exclude_from_eta(progress: tqdm.tqdm, seconds: float) -> None:
    """Moves the bar's start forward by `seconds` (a compile or an evaluation): not training time."""
    if seconds > 0 and not progress.disable:
        progress.start_t += seconds


def format_summary(summary: dict[str, Any], workdir: str | os.PathLike, task: Task) -> str:
    """The end-of-run summary as a few readable lines (`train_and_evaluate`'s return value); the
    figures of the task that ran (`Task.summary_lines`)."""
    finished = summary["step"] >= summary["num_steps"]
    lines = [
        f"{'finished' if finished else 'stopped'} at step {summary['step']} of {summary['num_steps']} in {workdir}"
    ]
    lines += task.summary_lines(summary)
    steps = ", ".join(str(s) for s in summary["checkpoint_steps"]) or "none"
    lines.append(f"  checkpoints: {steps}")
    lines.append(
        f"  compiles: {summary['num_compiles']} train step ({summary['compile_seconds']:.1f} s); "
        f"validation {summary['eval_seconds']:.1f} s"
    )
    last = summary["last_logged"]
    if "audio_hours_seen" in last:
        mfu = f", MFU {last['mfu']:.1%} in the last window" if last.get("mfu") is not None else ""
        lines.append(
            f"  compute: {last['audio_hours_seen']:.4g} hours of audio seen, {last['flops_seen']:.3g} model FLOPs{mfu}"
        )
    lines.append(f"  data: {summary['data']}")
    if "health" in summary:
        lines.append(f"  health: {summary['health']}")
    return "\n".join(lines)
