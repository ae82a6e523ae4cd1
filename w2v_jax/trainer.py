"""The training loop: `train_and_evaluate(config, workdir, task=None)`.

One loop for every task: pretraining (`PretrainingTask`, the default) and CTC fine-tuning
(`w2v_jax.finetuning.FineTuningTask`). A `Task` says what differs: the model and its config, the
step's objective and optimizer, the initial parameters, the input pipeline, the progress-bar
metrics and the end-of-run plot. Resume, checkpoints, SIGTERM, non-finite skips, metrics and
TensorBoard are the loop's, shared.

Restarting the same command on the same workdir resumes from the newest complete checkpoint:
parameters, optimizer state, step, counters, PRNG key, every process's data-iterator position and
the metrics of the logging window in progress all come back, and `metrics.jsonl` lines logged
after that checkpoint are dropped, so the resumed run logs exactly what an uninterrupted run logs
(same device count). SIGTERM (preemption) saves a checkpoint at the next step and returns.

Every `train.eval_every` updates the run is validated (`w2v_jax.evaluation`; pretraining's
`pretraining_evaluator` by default, any `Evaluator` through `make_evaluator`): the values join that
step's logged record as `valid_*` keys. Validation uses no training randomness and no iterator, so
it changes nothing a resume replays.

Outputs in `workdir`: `config.json` (the resolved config), `metrics.jsonl` + TensorBoard events,
`checkpoints/<step>/`, `loss_curve.png` at the end; a tqdm bar with ETA on the console.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from w2v_jax import checkpointing, distributed, evaluation, metrics as metrics_lib, sharding
from w2v_jax import train_step as train_lib
from w2v_jax import workdir as workdir_lib
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import default_manifest, make_train_iterator
from w2v_jax.data.pipeline import TrainIterator
from w2v_jax.model import Wav2Vec2ForPreTraining

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# Per-step metrics added up over a logging window instead of averaged.
_SUMMED = ("skipped_nonfinite", "num_masked", "num_correct", "chance_correct")
# Metrics divided once over a logging window: sum(numerator) / sum(denominator).
_RATIOS = {"accuracy": ("num_correct", "num_masked"), "chance_accuracy": ("chance_correct", "num_masked")}
# Counters that are states, not per-step values: the window keeps the last one.
_LAST = ("nonfinite_total", "nonfinite_consecutive")


class TrainingDivergedError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


def _precision_dtype(precision: str) -> jnp.dtype | None:
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return jnp.bfloat16
    raise ValueError(f"train.precision must be 'float32' or 'bfloat16', got {precision!r}")


def _validate(config: ml_collections.ConfigDict) -> None:
    """Eager checks of the settings the loop relies on (the model config checks itself)."""
    t = config.train
    positive = ("batch_size", "num_steps", "log_every", "checkpoint_every", "grad_accum_steps", "max_consecutive_nonfinite")
    for name in positive:
        if not isinstance(t[name], int) or t[name] < 1:
            raise ValueError(f"train.{name} must be a positive int, got {t[name]!r}")
    eval_every = t.get("eval_every", 0)
    if not isinstance(eval_every, int) or eval_every < 0 or eval_every % t.log_every:
        raise ValueError(
            f"train.eval_every must be 0 (off) or a multiple of train.log_every={t.log_every} (validation values "
            f"go into the record of a logged step), got {eval_every!r}"
        )
    num_devices = jax.device_count()
    if t.batch_size % (num_devices * t.grad_accum_steps):
        raise ValueError(
            f"train.batch_size={t.batch_size} must be divisible by the number of devices ({num_devices}) "
            f"times train.grad_accum_steps ({t.grad_accum_steps})"
        )
    if t.batch_size % jax.process_count():
        raise ValueError(f"train.batch_size={t.batch_size} must be divisible by the {jax.process_count()} processes")
    if config.data.min_sample_size > config.data.max_sample_size:
        raise ValueError(
            f"data.min_sample_size={config.data.min_sample_size} > data.max_sample_size={config.data.max_sample_size}"
        )


def _host_window(window: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The window's per-step metrics as JSON-able host values (NaN and infinity -> None).

    Entries are device arrays (steps of this process) or plain values (restored from a checkpoint).
    """
    host = []
    for step_metrics in jax.device_get(window):
        values = {k: v.item() if hasattr(v, "item") else v for k, v in step_metrics.items()}
        host.append({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()})
    return host


def _summarize(window: list[dict[str, Any]]) -> dict[str, Any]:
    """One logged record from a window of per-step host metrics."""
    # The task's metrics have them (a window restored from an older checkpoint may lack a newer one).
    ratios = {k: v for k, v in _RATIOS.items() if any(v[0] in m or k in m for m in window)}
    averaged = metrics_lib.mean_metrics(
        [{k: v for k, v in m.items() if k not in _LAST} for m in window], summed=_SUMMED, ratios=ratios
    )
    return {**averaged, **{k: window[-1][k] for k in _LAST}}


def pretraining_evaluator(
    config: ml_collections.ConfigDict, graphdef: Any, mesh: jax.sharding.Mesh, state_shardings: Any
) -> evaluation.PretrainingEvaluator:
    """The validation of a pretrain config: `data.valid_manifest` (empty: the embedded corpus's
    valid split), batches of `train.batch_size` made as training makes them, masks from `train.seed`."""
    manifest = config.data.get("valid_manifest", "") or str(default_manifest("valid"))
    batches, skipped = evaluation.validation_batches(
        evaluation.load_waveforms(manifest, normalize=config.data.normalize),
        Wav2Vec2Config.from_run_config(config),
        batch_size=config.train.batch_size,
        max_sample_size=config.data.max_sample_size,
        min_sample_size=config.data.min_sample_size,
        seed=config.train.seed,
    )
    logger.info("validation: %d batches from %s (%d utterances too short, skipped)", len(batches), manifest, skipped)
    return evaluation.PretrainingEvaluator(
        graphdef, batches, mesh, state_shardings.params, state_shardings.model_state
    )


class Task(Protocol):
    """What a kind of training run plugs into the loop (see the module docstring).

    Attributes:
      name: the progress bar's label.
      model_class: the model `train_step.create_train_state` builds.
      progress_metrics: metric name -> progress-bar label.
    """

    name: str
    model_class: type
    progress_metrics: dict[str, str]

    def prepare(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, *, primary: bool) -> None:
        """Called once the workdir is locked and its config checked, before anything else."""
        ...

    def model_config(self, config: ml_collections.ConfigDict) -> Wav2Vec2Config:
        ...

    def optimizer_and_hyperparams(self, config: ml_collections.ConfigDict) -> tuple[Any, train_lib.StepHyperparams]:
        ...

    def initial_state(self, state: train_lib.TrainState) -> train_lib.TrainState:
        """The state of a fresh run (not a resume): e.g. pretrained parameters put in."""
        ...

    def data_iterator(self, config: ml_collections.ConfigDict, *, batch_size: int, shard_index: int,
                      shard_count: int) -> TrainIterator:
        ...

    def make_evaluator(self, config: ml_collections.ConfigDict, graphdef: Any, mesh: jax.sharding.Mesh,
                       state_shardings: Any) -> evaluation.Evaluator:
        """The validation run every `train.eval_every` updates."""
        ...

    def plot(self, records: list[dict[str, Any]], workdir: pathlib.Path) -> None:
        ...


class PretrainingTask:
    """wav2vec 2.0 pretraining on `data.train_manifest` (default: the embedded corpus)."""

    name = "pretrain"
    model_class = Wav2Vec2ForPreTraining
    progress_metrics = {"loss": "loss", "accuracy": "acc"}

    def prepare(self, config, workdir, *, primary):
        del config, workdir, primary

    def model_config(self, config):
        return Wav2Vec2Config.from_run_config(config)

    def optimizer_and_hyperparams(self, config):
        return train_lib.optimizer_and_hyperparams(config.train)

    def initial_state(self, state):
        return state

    def data_iterator(self, config, *, batch_size, shard_index, shard_count):
        return make_train_iterator(
            config.data.train_manifest or str(default_manifest("train")),
            batch_size=batch_size,
            seed=config.train.seed,
            max_sample_size=config.data.max_sample_size,
            min_sample_size=config.data.min_sample_size,
            pad=config.data.pad,
            normalize=config.data.normalize,
            num_workers=config.data.num_workers,
            shard_index=shard_index,
            shard_count=shard_count,
            strict=config.data.strict,
            max_skip_fraction=config.data.max_skip_fraction,
            allow_outside_root=config.data.allow_outside_root,
        )

    def make_evaluator(self, config, graphdef, mesh, state_shardings):
        return pretraining_evaluator(config, graphdef, mesh, state_shardings)

    def plot(self, records, workdir):
        metrics_lib.plot_loss_curve(records, workdir / metrics_lib.LOSS_CURVE_FILE)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    make_evaluator: Callable[..., evaluation.Evaluator] | None = None,
    task: Task | None = None,
) -> dict[str, Any]:
    """Runs or resumes a training run (see the module docstring).

    Args:
      config: a `w2v_jax/configs/pretrain.py` config (or the task's, e.g. `finetune.py`).
      workdir: the run's directory (created if missing).
      make_evaluator: `(config, graphdef, mesh, state_shardings) -> Evaluator`, built when
        `train.eval_every > 0` and called every `eval_every` updates (default: the task's).
      task: what is trained; default `PretrainingTask()`.

    Returns:
      a summary: final step, last logged metrics, number of compiles, checkpoint steps.

    Raises:
      TrainingDivergedError: after `train.max_consecutive_nonfinite` skipped updates in a row (the
        newest checkpoint, finite by construction, is kept).
      workdir.WorkdirLockedError: another run holds the workdir (nothing is touched).
      workdir.ConfigChangedError: a resume changes fields its checkpoints depend on (nothing written).
      checkpointing.CorruptCheckpointError: checkpoints exist but none is intact (moved aside).
    """
    d = config.distributed
    distributed.initialize(d.coordinator_address, d.num_processes, d.process_id)
    _validate(config)
    # The lock comes before anything reads or writes the workdir; process 0 holds it for all.
    with workdir_lib.WorkdirLock(workdir, enabled=distributed.is_primary()):
        task = task or PretrainingTask()
        return _train_locked(config, pathlib.Path(workdir), task, make_evaluator or task.make_evaluator)


def _train_locked(
    config: ml_collections.ConfigDict,
    workdir_path: pathlib.Path,
    task: Task,
    make_evaluator: Callable[..., evaluation.Evaluator],
) -> dict[str, Any]:
    """`train_and_evaluate` once the workdir is locked."""
    primary = distributed.is_primary()
    workdir_path.mkdir(parents=True, exist_ok=True)
    workdir_lib.prepare_config(
        workdir_path,
        config.to_dict(),
        config.to_json_best_effort(indent=2, sort_keys=True),
        has_checkpoints=checkpointing.has_checkpoints(workdir_path / "checkpoints"),
        write=primary,
    )

    task.prepare(config, workdir_path, primary=primary)

    t = config.train
    model_config = task.model_config(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    optimizer, hparams = task.optimizer_and_hyperparams(config)
    graphdef, state, state_shardings = train_lib.create_train_state(
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
    step_fn = train_lib.TrainStep(graphdef, optimizer, hparams, mesh, state_shardings)
    eval_every = t.get("eval_every", 0)
    evaluator = make_evaluator(config, graphdef, mesh, state_shardings) if eval_every else None
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    logger.info("model: %.2fM parameters; mesh %s", num_params / 1e6, dict(mesh.shape))

    process_index, process_count = jax.process_index(), jax.process_count()
    data_iter = task.data_iterator(
        config, batch_size=t.batch_size // process_count, shard_index=process_index, shard_count=process_count
    )

    checkpointer = checkpointing.Checkpointer(
        workdir_path / "checkpoints", keep=t.keep_checkpoints, async_save=t.async_checkpointing
    )
    key_data = np.asarray(jax.random.key_data(jax.random.key(t.seed)))
    window: list[dict[str, Any]] = []
    restored = checkpointer.restore_newest_intact(checkpointing.abstract_like(state))
    if restored is None:
        state = task.initial_state(state)
        if primary:
            workdir_lib.start_metrics_file(workdir_path / metrics_lib.METRICS_FILE)
    if restored is not None:
        latest, state, host = restored
        if len(host["data_iterators"]) != process_count:
            raise ValueError(
                f"checkpoint {latest} in {checkpointer.directory} was written by {len(host['data_iterators'])} "
                f"processes, this run has {process_count}: resume with the same number of processes"
            )
        data_iter.set_state(host["data_iterators"][process_index])
        key_data = np.asarray(host["rng"], np.uint32)
        window = host["window"]
        if primary:
            metrics_lib.truncate_after(workdir_path / metrics_lib.METRICS_FILE, latest)
        logger.info("resumed from checkpoint %d in %s", latest, checkpointer.directory)
    key = jax.random.wrap_key_data(jnp.asarray(key_data))
    start_step = int(state.step)

    def host_record() -> dict[str, Any]:
        return {
            "data_iterators": distributed.allgather_json(data_iter.get_state()),
            "rng": key_data.tolist(),
            "window": _host_window(window),
        }

    def save(step: int) -> None:
        checkpointer.save(step, state, host_record())

    preempted = {"flag": False}

    def on_sigterm(signum, frame):
        del signum, frame
        preempted["flag"] = True  # acted on between two steps, never inside one

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm) if process_count == 1 else None

    writer = metrics_lib.MetricWriter(
        workdir_path, enabled=primary, config=config.to_json_best_effort(indent=2, sort_keys=True)
    )
    # smoothing=0: the rate is steps done / time since the start, and the start is moved forward by
    # every compile and evaluation (`_exclude_from_eta`), so the ETA counts training steps only.
    progress = tqdm.tqdm(
        total=t.num_steps, initial=start_step, disable=not primary, dynamic_ncols=True, desc=task.name, smoothing=0
    )
    last_logged: dict[str, Any] = {}
    last_valid: dict[str, Any] = {}
    eval_seconds = 0.0
    window_start = time.perf_counter()
    window_compile = step_fn.compile_seconds
    window_audio = 0.0
    previous_metrics = None
    step = start_step
    try:
        while step < t.num_steps:
            local = next(data_iter)
            train_lib.check_batch(local, t.batch_size // process_count)
            window_audio += float(np.sum(local["attention_mask"])) * process_count / SAMPLE_RATE
            batch = {
                k: jax.make_array_from_process_local_data(
                    step_fn.batch_sharding, v, (t.batch_size, *v.shape[1:])
                )
                for k, v in local.items()
            }
            compiled_before = step_fn.compile_seconds
            state, step_metrics = step_fn(state, batch, key)
            _exclude_from_eta(progress, step_fn.compile_seconds - compiled_before)
            step += 1
            window.append(step_metrics)
            # Read the previous step's skip counter, not this one's: one step stays in flight.
            skipped_in_a_row = 0 if previous_metrics is None else int(previous_metrics["nonfinite_consecutive"])
            if skipped_in_a_row >= t.max_consecutive_nonfinite:
                raise TrainingDivergedError(
                    f"stopping at step {step - 1}: {skipped_in_a_row} consecutive updates had a non-finite "
                    f"loss or gradient (train.max_consecutive_nonfinite={t.max_consecutive_nonfinite}); the "
                    f"newest checkpoint, step {checkpointer.latest_step()} in {checkpointer.directory}, is "
                    "finite and kept. Lower train.learning_rate or check the data."
                )
            previous_metrics = step_metrics
            progress.update(1)

            if step % t.log_every == 0 or step == t.num_steps:
                host = _host_window(window)
                record = _summarize(host)
                elapsed = time.perf_counter() - window_start - (step_fn.compile_seconds - window_compile)
                record["audio_seconds_per_second"] = window_audio / max(elapsed, 1e-9)
                record["steps_per_second"] = len(host) / max(elapsed, 1e-9)
                skips = distributed.allgather_json(data_iter.skip_counts())  # each process sees its rows
                record.update({f"data_skipped_{k}": sum(p[k] for p in skips) for k in skips[0]})
                if evaluator is not None and step % eval_every == 0:
                    eval_start = time.perf_counter()
                    values = evaluator(state, step)
                    record.update(evaluation.prefixed(values))
                    last_valid = {"step": step, **values}
                    eval_seconds += time.perf_counter() - eval_start
                    _exclude_from_eta(progress, time.perf_counter() - eval_start)
                writer.write(step, record)
                last_logged = {"step": step, **record}
                postfix = {label: f"{record[name]:.3f}" for name, label in task.progress_metrics.items() if name in record}
                postfix.update({f"valid {name}": f"{last_valid[name]:.3f}" for name in ("loss", "cer") if name in last_valid})
                progress.set_postfix(postfix)
                window, window_audio = [], 0.0
                window_start, window_compile = time.perf_counter(), step_fn.compile_seconds

            stop = preempted["flag"] if process_count == 1 else multihost_utils.reached_preemption_sync_point(step)
            if step % t.checkpoint_every == 0 or step == t.num_steps or stop:
                save(step)
            if stop:
                logger.warning("SIGTERM: checkpoint %d saved, stopping", step)
                break
    finally:
        progress.close()
        writer.close()
        data_iter.close()
        checkpointer.close()  # waits for the save in progress
        checkpoint_steps = checkpointer.all_steps()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)

    if primary and t.plot and step == t.num_steps:
        task.plot(metrics_lib.read_metrics(workdir_path / metrics_lib.METRICS_FILE), workdir_path)
    summary = {
        "step": step,
        "num_steps": t.num_steps,
        "last_logged": last_logged,
        "last_valid": last_valid,
        "num_compiles": step_fn.num_compiles,
        "compile_seconds": step_fn.compile_seconds,
        "eval_seconds": eval_seconds,
        "checkpoint_steps": checkpoint_steps,
        "data": data_iter.summary(),
    }
    if primary:
        logger.info("%s", format_summary(summary, workdir_path))
    return summary


def _exclude_from_eta(progress: tqdm.tqdm, seconds: float) -> None:
    """Moves the bar's start forward by `seconds` (a compile or an evaluation): not training time."""
    if seconds > 0 and not progress.disable:
        progress.start_t += seconds


def format_summary(summary: dict[str, Any], workdir: str | os.PathLike) -> str:
    """The end-of-run summary as a few readable lines (`train_and_evaluate`'s return value)."""

    def metrics_line(values: dict[str, Any]) -> str:
        parts = []
        for name, label, spec in (("loss", "loss", ".4f"), ("accuracy", "accuracy", ".3f"),
                                  ("code_perplexity", "code perplexity", ".2f")):
            value = values.get(name)
            parts.append(f"{label} {'n/a' if value is None else format(value, spec)}")
        return ", ".join(parts)

    finished = summary["step"] >= summary["num_steps"]
    lines = [
        f"{'finished' if finished else 'stopped'} at step {summary['step']} of {summary['num_steps']} in {workdir}"
    ]
    if summary["last_logged"]:
        lines.append(f"  train (step {summary['last_logged']['step']}): {metrics_line(summary['last_logged'])}")
    if summary["last_valid"]:
        lines.append(f"  valid (step {summary['last_valid']['step']}): {metrics_line(summary['last_valid'])}")
    steps = ", ".join(str(s) for s in summary["checkpoint_steps"]) or "none"
    lines.append(f"  checkpoints: {steps}")
    lines.append(
        f"  compiles: {summary['num_compiles']} train step ({summary['compile_seconds']:.1f} s); "
        f"validation {summary['eval_seconds']:.1f} s"
    )
    lines.append(f"  data: {summary['data']}")
    return "\n".join(lines)
