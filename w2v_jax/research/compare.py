"""Loss curves of our training beside the PyTorch twin's, step by step, and their gaps.

`compare_training` runs our real train step and `torch_twin.ReferenceTrainer` side by side on the
same batches, masks, distractors and Gumbel noise, plus a control run of ours from weights one
float32 ulp away (the yardstick of what float rounding alone does over the run);
`run_comparison` writes the curves (CSV, PNG) and a one-line verdict (`summary.json`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from w2v_jax import sharding
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.json_files import read_json_lines
from w2v_jax.layers import named_key
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.pretraining.task import PretrainingTask, pretraining_hyperparams
from w2v_jax.research import plotting
from w2v_jax.research.torch_twin import ReferenceTrainer, check_comparable, comparable_config
from w2v_jax.training import optim, train_step
from w2v_jax.training_draws import sample_gumbel_noise, sample_masks_and_negatives

# The curves compared (per masked frame where it applies), in our train step's metric names.
CURVE_METRICS = ("loss", "contrastive_loss", "diversity_loss", "code_perplexity", "accuracy", "grad_norm")
# Written to the CSV too, not part of the gap.
EXTRA_METRICS = ("learning_rate", "gumbel_temperature", "num_masked", "seconds")
# "jax_ulp": our step again, from initial weights moved by one float32 ulp: the control run that
# measures how far float rounding alone carries two runs apart (training amplifies it, and the
# hard Gumbel argmax turns small differences into different codeword choices).
FRAMEWORKS = ("jax", "pytorch", "jax_ulp")


def comparison_settings(config: ml_collections.ConfigDict, num_steps: int) -> ml_collections.ConfigDict:
    """A copy of a pretrain config set up for a step-by-step comparison with the reference.

    The model gets `comparable_config`; the schedules span `num_steps` (so a short comparison
    sees warmup and decay); one micro-batch per update and float32, as the reference runs.
    """
    if num_steps < 1:
        raise ValueError(f"the comparison needs at least one step, got {num_steps}")
    config = ml_collections.ConfigDict(config.to_dict())
    model = comparable_config(Wav2Vec2Config.from_run_config(config))
    config.model = ml_collections.ConfigDict(dataclasses.asdict(model))
    config.train.num_steps = num_steps
    config.train.warmup_steps = min(config.train.warmup_steps, num_steps)
    config.train.grad_accum_steps = 1
    config.train.precision = "float32"
    return config


def compare_training(
    config: ml_collections.ConfigDict, batches: Iterator[Mapping[str, np.ndarray]]
) -> list[dict[str, float]]:
    """Trains our model (our real train step) and the reference side by side, plus a control.

    Both start from our initial parameters and get, at every step, the same batch, the same span
    masks and distractors (sampled with our JAX samplers from a key of their own and passed
    explicitly to both) and the same Gumbel noise (the noise our model draws inside the step,
    re-derived from the step's key and fed to the reference). The control ("jax_ulp") is our step
    on the same inputs from initial weights one float32 ulp away (`jnp.nextafter`): the gap
    between it and "jax" is what float rounding alone does over the run, the yardstick for the
    gap to the reference.

    Args:
      config: a pretrain config prepared by `comparison_settings` (train.num_steps steps are run).
      batches: {"input_values", "attention_mask"} batches of `config.train.batch_size` rows.

    Returns:
      one record per step: `step` and `{metric}_{framework}` for CURVE_METRICS + EXTRA_METRICS and
      each of FRAMEWORKS.
    """
    t = config.train
    model_config = Wav2Vec2Config.from_run_config(config)
    check_comparable(model_config)
    # One device: the comparison is about the numbers, not the parallelism.
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    optimizer, hparams = pretraining_hyperparams(t)
    graphdef, state, state_shardings = train_step.create_train_state(
        model_config, optimizer, model_class=Wav2Vec2ForPreTraining, seed=t.seed, mesh=mesh
    )
    step_fn = train_step.TrainStep(graphdef, optimizer, hparams, mesh, state_shardings)
    _, control, _ = train_step.create_train_state(
        model_config, optimizer, model_class=Wav2Vec2ForPreTraining, seed=t.seed, mesh=mesh
    )
    one_ulp_up = jax.jit(
        lambda p: jax.tree.map(lambda x: jnp.nextafter(x, jnp.inf), p), out_shardings=state_shardings.params
    )
    control = dataclasses.replace(control, params=one_ulp_up(control.params))
    reference = ReferenceTrainer(model_config, state.params, optim.OptimizerSettings.from_train_config(t), hparams)
    shapes = nnx.eval_shape(lambda: Wav2Vec2ForPreTraining(model_config))
    key = jax.random.key(t.seed)  # the trainer's base key
    sampling_key = named_key(key, "compare_pytorch")

    records = []
    for step in range(t.num_steps):
        batch = {k: np.asarray(v) for k, v in next(batches).items()}
        rows, samples = batch["input_values"].shape
        frames = shapes.num_frames(samples)
        frame_lengths = shapes.num_frames(np.sum(batch["attention_mask"], axis=1))
        step_key = jax.random.fold_in(sampling_key, step)
        mask, negatives = sample_masks_and_negatives(step_key, model_config, rows, frames, frame_lengths)
        noise = sample_gumbel_noise(train_step.model_key(key, step, 0), model_config, rows, frames)
        explicit = {"mask_time_indices": np.asarray(mask), "negative_indices": np.asarray(negatives)}

        metrics = {}
        start = time.perf_counter()
        state, out = step_fn(state, {**batch, **explicit}, key)
        metrics["jax"] = {k: float(v) for k, v in jax.device_get(out).items()}
        metrics["jax"]["seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        metrics["pytorch"] = reference.step(
            batch, explicit["mask_time_indices"], explicit["negative_indices"], np.asarray(noise)
        )
        metrics["pytorch"]["seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        control, out = step_fn(control, {**batch, **explicit}, key)
        metrics["jax_ulp"] = {k: float(v) for k, v in jax.device_get(out).items()}
        metrics["jax_ulp"]["seconds"] = time.perf_counter() - start

        record: dict[str, float] = {"step": step + 1}
        for framework in FRAMEWORKS:
            record.update({f"{name}_{framework}": metrics[framework][name] for name in CURVE_METRICS + EXTRA_METRICS})
        records.append(record)
    return records


def smooth(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points (fewer at the start)."""
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    values = np.asarray(values, np.float64)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def relative_gaps(
    records: Sequence[Mapping[str, float]],
    window: int = 10,
    metrics: Sequence[str] = CURVE_METRICS,
    between: tuple[str, str] = ("jax", "pytorch"),
) -> dict[str, tuple[float, int]]:
    """The largest relative gap between two frameworks' smoothed curves, for each metric.

    The gap at a step is |a - b| / max(|a|, |b|, 1e-6) of the two smoothed values.

    Returns:
      {metric: (largest gap, step where it is)}.
    """
    if not records:
        raise ValueError("no records to compare")
    steps = [int(r["step"]) for r in records]
    out = {}
    for name in metrics:
        a = smooth([r[f"{name}_{between[0]}"] for r in records], window)
        b = smooth([r[f"{name}_{between[1]}"] for r in records], window)
        gap = np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-6)
        worst = int(np.argmax(gap))
        out[name] = (float(gap[worst]), steps[worst])
    return out


def write_curves_csv(records: Sequence[Mapping[str, float]], path: str | os.PathLike) -> None:
    """One row per step: `step`, then `{metric}_{framework}` columns."""
    if not records:
        raise ValueError("no records to write")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def read_curve_file(path: str | os.PathLike, metric: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `metric` from an external run's CSV or JSONL file.

    CSV: a header with a `step` column and a `metric` column (e.g. `step,loss`). JSONL: one JSON
    object per line with `step` and `metric` keys (our `metrics.jsonl`, or any logger's).
    Rows without the metric (or with an empty / null value) are skipped.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"curve file {path} does not exist")
    if path.suffix in (".jsonl", ".json"):
        rows = read_json_lines(path, expect=dict)
    elif path.suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        raise ValueError(f"curve file {path} must be .csv, .tsv or .jsonl (with step and {metric} fields)")
    if not rows or "step" not in rows[0] or not any(metric in r for r in rows):
        raise ValueError(f"curve file {path} needs 'step' and {metric!r} fields; first row: {rows[:1]}")
    points = [(float(r["step"]), float(r[metric])) for r in rows if r.get(metric) not in (None, "")]
    steps, values = zip(*points) if points else ((), ())
    return np.asarray(steps), np.asarray(values)


def run_comparison(
    config: ml_collections.ConfigDict,
    num_steps: int,
    workdir: str | os.PathLike,
    *,
    external: Sequence[str | os.PathLike] = (),
    window: int = 10,
    batches: Iterator[Mapping[str, np.ndarray]] | None = None,
) -> dict[str, object]:
    """`compare_training` on the config's data, then the outputs in `workdir`.

    Writes `curves.csv`, `curves.png` (both frameworks and any external curve files overlaid)
    and `summary.json`; returns the summary, whose "line" is the one-line verdict.

    Args:
      config: a pretrain config (`w2v_jax/configs/pretrain.py`); made comparable here.
      num_steps: updates to run on each side.
      workdir: output folder (created).
      external: CSV / JSONL curve files of other PyTorch runs (step and loss), overlaid on the loss.
      window: moving-average window of the smoothed curves the gap is measured on.
      batches: the batches to train on; default the config's data pipeline (train manifest).
    """
    config = comparison_settings(config, num_steps)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    external_curves = {pathlib.Path(p).name: read_curve_file(p) for p in external}
    if batches is None:
        batches = PretrainingTask().data_iterator(
            config, batch_size=config.train.batch_size, shard_index=0, shard_count=1
        )
    records = compare_training(config, batches)
    write_curves_csv(records, workdir / "curves.csv")
    gaps = relative_gaps(records, window)
    control_gaps = relative_gaps(records, window, between=("jax", "jax_ulp"))
    worst = max(gaps, key=lambda name: gaps[name][0])
    worst_control = max(control_gaps, key=lambda name: control_gaps[name][0])
    seconds = {fw: float(np.median([r[f"seconds_{fw}"] for r in records[1:] or records])) for fw in FRAMEWORKS}
    line = (
        f"{num_steps} steps: largest relative gap between the smoothed (window {window}) curves of JAX and "
        f"PyTorch {gaps[worst][0]:.2e} ({worst} at step {gaps[worst][1]}); "
        + ", ".join(f"{name} {gap:.1e}" for name, (gap, _) in gaps.items())
        + f". Float-rounding yardstick, JAX vs JAX from 1-ulp-perturbed weights: {control_gaps[worst_control][0]:.2e} "
        f"({worst_control} at step {control_gaps[worst_control][1]}); "
        + ", ".join(f"{name} {gap:.1e}" for name, (gap, _) in control_gaps.items())
        + f". Median step time JAX {seconds['jax']:.3f} s, PyTorch {seconds['pytorch']:.3f} s"
    )
    plotting.plot_curve_overlay(records, workdir / "curves.png", CURVE_METRICS, FRAMEWORKS, external_curves)
    summary = {
        "line": line,
        "num_steps": num_steps,
        "window": window,
        "gaps": {name: {"gap": gap, "step": step} for name, (gap, step) in gaps.items()},
        "control_gaps": {name: {"gap": gap, "step": step} for name, (gap, step) in control_gaps.items()},
        "median_step_seconds": seconds,
        "model": config.model.to_dict(),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")
    return summary
