"""Hyper-parameter sweeps as data: grid expansion, one run per point, resume, result collection.

A sweep config (e.g. `w2v_jax/configs/codebook_ablation.py`) is a pretrain config with a
`grid` field mirroring the config's structure, whose leaves are the values to try:

    config.grid.model.num_codevector_groups = (1, 2, 4)
    config.grid.model.num_codevectors_per_group = (80, 160, 320, 640)

`expand_grid` turns it into points (`{"model.num_codevector_groups": 2, ...}`, the cartesian
product in a fixed order); each point is a run in `workdir/<point name>/`, trained by the
trainer's `train_and_evaluate` (so a point interrupted mid-run resumes from its checkpoint); a
point whose final checkpoint exists is finished and skipped when the sweep runs again (also when
it was trained by a cluster job).
`launch_commands` gives the same runs as command lines for a cluster scheduler.
`collect_results` reads every finished point's last logged metrics, evaluates its final
checkpoint on a validation set (`validation.validation_metrics`: loss, accuracy beside its real
chance level, code perplexity, share of codewords used) and, given the probe's utterances, with the
held-out-voice phone probe of every layer (`probes.phone_probe`, once per final checkpoint: the
report is kept in the point's `phone_probe.json`). A `train.seed` grid axis repeats every point
with other seeds; results are summarised over them (`summarize_seeds`: mean and min-max). Files:
`results.csv` (one row per run, every seed), `results.md` (one row per point, mean [min, max] over
seeds), `results.png` (the trend against the codebook size G x V with min-max error bars) and
`results_curves.png` (every run's training curves overlaid).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import pathlib
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from w2v_jax.checkpoints.loading import load_model
from w2v_jax.checkpoints.run_layout import CHECKPOINTS_DIR
from w2v_jax.research import plotting, probes, validation
from w2v_jax.training import metrics

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
RESULTS_CURVES_PNG = "results_curves.png"
PROBE_CACHE = "phone_probe.json"
# The grid axis whose values are repetitions of a point, not points: results are summarised over it.
SEED_AXIS = "train.seed"
# The run values `results.md` and `results.png` summarise over seeds, with their column titles.
SUMMARY_METRICS = {
    "valid_loss": "valid loss",
    "valid_accuracy": "valid accuracy",
    "valid_chance_accuracy": "chance",
    "valid_accuracy_above_chance": "accuracy - chance",
    "valid_code_perplexity": "code perplexity",
    "used_fraction": "codewords used",
    "probe_best_unseen_voice": "probe: best layer, unseen voices",
    "probe_best_held_out_sentences": "probe: best layer, held-out sentences",
    "probe_last_unseen_voice": "probe: last layer, unseen voices",
}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def expand_grid(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Points of a grid: `{"model": {"a": (1, 2)}, ...}` -> `[{"model.a": 1, ...}, {"model.a": 2, ...}]`.

    The cartesian product over the leaves (each a non-empty sequence of values, or a single value),
    in the grid's key order with the last key varying fastest.
    """
    grid = grid.to_dict() if isinstance(grid, ml_collections.ConfigDict) else grid
    axes = _flatten(grid)
    if not axes:
        raise ValueError("the sweep grid is empty: set config.grid.<section>.<field> = (values, ...)")
    values = []
    for path, leaf in axes.items():
        leaf = list(leaf) if isinstance(leaf, list | tuple) else [leaf]
        if not leaf:
            raise ValueError(f"grid axis {path} has no values")
        values.append(leaf)
    return [dict(zip(axes, combination)) for combination in itertools.product(*values)]


def point_name(point: Mapping[str, Any]) -> str:
    """A folder name for a point: `num_codevector_groups=2,num_codevectors_per_group=320`."""
    return ",".join(f"{path.rsplit('.', 1)[-1]}={value}" for path, value in point.items())


def apply_point(config: ml_collections.ConfigDict, point: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` (without its `grid`) with the point's fields set; unknown fields raise."""
    out = ml_collections.ConfigDict(config.to_dict())
    if "grid" in out:
        del out["grid"]
    for path, value in point.items():
        *parents, leaf = path.split(".")
        node = out
        for name in parents:
            if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
                raise ValueError(f"grid axis {path}: the config has no section {name!r}")
            node = node[name]
        if leaf not in node:
            raise ValueError(f"grid axis {path}: the config has no field {leaf!r}")
        node[leaf] = value
    return out


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    train_fn: Callable[[ml_collections.ConfigDict, str], Mapping[str, Any]],
) -> list[pathlib.Path]:
    """Trains every point of `config.grid` one after another; finished points are skipped.

    Args:
      config: a sweep config (a pretrain config with a `grid`).
      workdir: the sweep's folder; point runs go in `workdir/<point name>`.
      train_fn: `trainer.train_and_evaluate` (or a stand-in with its signature).

    Returns:
      the points' run folders.
    """
    workdir = pathlib.Path(workdir)
    folders = []
    for point in expand_grid(config.grid):
        folder = workdir / point_name(point)
        folders.append(folder)
        point_config = apply_point(config, point)
        if not is_finished(folder, point_config.train.num_steps):
            train_fn(point_config, str(folder))
    return folders


def is_finished(folder: pathlib.Path, num_steps: int) -> bool:
    """Whether a run completed: its final checkpoint is committed and its metrics are logged.

    orbax renames a checkpoint's temporary folder to `<step>` only once it is fully written.
    """
    metrics_file = folder / metrics.METRICS_FILE
    return (folder / CHECKPOINTS_DIR / str(num_steps)).is_dir() and metrics_file.is_file()


def launch_commands(
    config: ml_collections.ConfigDict,
    config_path: str,
    workdir: str | os.PathLike,
    extra_flags: Sequence[str] = (),
    launcher: str = "w2v-pretrain",
) -> list[str]:
    """One pretraining command per point (for a cluster scheduler); finished points included.

    Args:
      config: the sweep config.
      config_path: how the config was named on the command line (`path[:variant]`).
      workdir: the sweep's folder.
      extra_flags: further `--config.*` overrides given to the sweep, repeated for every point.
      launcher: the training command.
    """
    commands = []
    for point in expand_grid(config.grid):
        folder = pathlib.Path(workdir) / point_name(point)
        flags = [f"--config={config_path}", f"--workdir={folder}", *extra_flags]
        flags += [f"--config.{path}={value}" for path, value in point.items()]
        commands.append(" ".join([launcher, *(shlex.quote(f) for f in flags)]))
    return commands


def collect_results(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    valid_waveforms: Sequence[np.ndarray],
    load_model: Callable[[pathlib.Path], Any] = load_model,
    *,
    probe_sets: probes.ProbeSets | None = None,
    probe_steps: int = 300,
    phone_probe: Callable[..., probes.PhoneProbeReport] = probes.phone_probe,
    curves_x: str = "step",
) -> list[dict[str, Any]]:
    """One row per finished run: its grid values, last logged training metrics, validation metrics
    and phone probe.

    Writes `results.csv` (these rows), `results.md` (`results_table` of `summarize_seeds`),
    `results.png` (`plotting.plot_sweep_results`) and `results_curves.png` (every run's
    `metrics.jsonl`, `plotting.plot_sweep_curves`) into `workdir`. Unfinished runs are listed in
    `results.md` as missing.

    Args:
      config: the sweep config.
      workdir: the sweep's folder.
      valid_waveforms: held-out audio for `validation.validation_metrics` (masks from the run's seed).
      load_model: folder -> model (default: the final checkpoint of a training workdir).
      probe_sets: the phone probe's utterances (`probes.HeldOutVoices.split`); None: no probe.
      probe_steps: Adam iterations of each linear probe.
      phone_probe: `probes.phone_probe` (or a stand-in with its signature), run once per final
        checkpoint on the model's layers (no baselines); the report is kept in the run's
        `phone_probe.json` and reused while the checkpoint, probe sets and steps are the same.
      curves_x: what `results_curves.png` draws the curves against (`metrics.X_AXES`: the step, the
        hours of audio seen, the model FLOPs done).

    Returns:
      the rows: the grid values, `codebook_size` (G x V), `step`, `train_*` (the last logged
      window), `valid_loss`, `valid_accuracy`, `valid_chance_accuracy` (a guess among the
      distractors that count), `valid_accuracy_above_chance`, `valid_code_perplexity` (of the
      codeword histogram), `used_fraction`, and with a probe `probe_best_layer` (the best on unseen
      voices, or on held-out sentences when none is held out), `probe_best_unseen_voice`,
      `probe_best_held_out_sentences`, `probe_last_layer`, `probe_last_unseen_voice`,
      `probe_last_held_out_sentences`.
    """
    workdir = pathlib.Path(workdir)
    rows, missing, curves = [], [], []
    for point in expand_grid(config.grid):
        folder = workdir / point_name(point)
        point_config = apply_point(config, point)
        if not is_finished(folder, point_config.train.num_steps):
            missing.append(point_name(point))
            continue
        records = metrics.read_metrics(folder / metrics.METRICS_FILE)
        curves.append((point, records))
        last = records[-1]
        model = load_model(folder)
        valid = validation.validation_metrics(model, valid_waveforms, seed=point_config.train.seed)
        row = {
            **point,
            "codebook_size": point_config.model.num_codevector_groups * point_config.model.num_codevectors_per_group,
            "step": last["step"],
            "train_loss": last["loss"],
            "train_accuracy": last["accuracy"],
            "train_chance_accuracy": last.get("chance_accuracy", math.nan),
            "train_code_perplexity": last["code_perplexity"],
            "valid_loss": valid.loss,
            "valid_accuracy": valid.accuracy,
            "valid_chance_accuracy": valid.chance_accuracy,
            "valid_accuracy_above_chance": valid.accuracy - valid.chance_accuracy,
            "valid_code_perplexity": valid.code_perplexity,
            "used_fraction": valid.used_fraction,
        }
        if probe_sets is not None:
            report = _probe_run(folder, model, last["step"], probe_sets, probe_steps, phone_probe)
            row |= _probe_columns(report)
        rows.append(row)
    if rows:
        with open(workdir / RESULTS_CSV, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        points = summarize_seeds(rows)
        plotting.plot_sweep_results(points, workdir / RESULTS_PNG)
        plotting.plot_sweep_curves([(_point_label(p), r) for p, r in curves], workdir / RESULTS_CURVES_PNG, x=curves_x)
    (workdir / RESULTS_MD).write_text(results_table(rows, missing) + "\n", encoding="utf-8")
    return rows


def _probe_run(
    folder: pathlib.Path,
    model: Any,
    step: int,
    sets: probes.ProbeSets,
    steps: int,
    phone_probe: Callable[..., probes.PhoneProbeReport],
) -> probes.PhoneProbeReport:
    """The run's phone probe report, from its `phone_probe.json` when that was made of the same
    checkpoint step, probe sets and probe steps."""
    key = {"step": step, "probe_sets": sets.fingerprint(), "probe_steps": steps}
    cache = folder / PROBE_CACHE
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
            if stored.get("key") == key:
                return probes.PhoneProbeReport.from_dict(stored["report"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # an unreadable cache (a run killed while writing it) is computed again
    report = phone_probe(model, sets, name="checkpoint", baselines=False, steps=steps)
    temporary = cache.with_suffix(".tmp")
    temporary.write_text(json.dumps({"key": key, "report": report.to_dict()}, indent=1) + "\n", encoding="utf-8")
    temporary.replace(cache)
    return report


def _probe_columns(report: probes.PhoneProbeReport) -> dict[str, Any]:
    rows = report.rows("checkpoint")
    best, last = report.best("checkpoint"), rows[-1]
    return {
        "probe_best_layer": best.layer,
        "probe_best_unseen_voice": best.unseen_voice,
        "probe_best_held_out_sentences": best.held_out_sentences,
        "probe_last_layer": last.layer,
        "probe_last_unseen_voice": last.unseen_voice,
        "probe_last_held_out_sentences": last.held_out_sentences,
    }


@dataclasses.dataclass(frozen=True)
class Spread:
    """A value over a point's seeds: the mean and the range [min, max]; NaN when any seed's is."""

    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> Spread:
        values = np.asarray(values, np.float64)
        return cls(float(np.mean(values)), float(np.min(values)), float(np.max(values)))

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if self.min == self.max:
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} [{self.min:.4g}, {self.max:.4g}]"


def _point_label(point: Mapping[str, Any]) -> str:
    """A point's short name without its seed, for legends: "G=2,V=320"."""
    short = {"model.num_codevector_groups": "G", "model.num_codevectors_per_group": "V"}
    return ",".join(
        f"{short.get(path, path.rsplit('.', 1)[-1])}={value}" for path, value in point.items() if path != SEED_AXIS
    )


def _grid_axes(row: Mapping[str, Any]) -> list[str]:
    # Grid values are the row's dotted config paths ("model.num_codevector_groups"); measured
    # values have plain names.
    return [key for key in row if "." in key]


def summarize_seeds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`collect_results` rows summarised per grid point over the `train.seed` axis.

    Returns:
      one dict per point, in the rows' order: its grid values but the seed, `codebook_size`,
      `seeds` (those finished), a `Spread` for each `SUMMARY_METRICS` name the rows have, and with a
      probe `probe_best_layer` (each seed's best layer, joined with "/" when they differ).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        point = tuple((axis, row[axis]) for axis in _grid_axes(row) if axis != SEED_AXIS)
        groups.setdefault(point, []).append(row)
    points = []
    for point, members in groups.items():
        summary: dict[str, Any] = dict(point)
        summary["codebook_size"] = members[0]["codebook_size"]
        summary["seeds"] = [m.get(SEED_AXIS) for m in members]
        for name in SUMMARY_METRICS:
            if name in members[0]:
                summary[name] = Spread.of([m[name] for m in members])
        if "probe_best_layer" in members[0]:
            summary["probe_best_layer"] = "/".join(dict.fromkeys(m["probe_best_layer"] for m in members))
        points.append(summary)
    return points


def results_table(rows: Sequence[Mapping[str, Any]], missing: Sequence[str] = ()) -> str:
    """Markdown of `collect_results` rows: one line per grid point, each value as its mean over
    seeds and, when seeds differ, their range: `mean [min, max]` (4 significant digits)."""
    if not rows:
        return "no finished points" + (f"; missing: {', '.join(missing)}" if missing else "")
    points = summarize_seeds(rows)
    axes = _grid_axes(points[0])
    columns = [name for name in SUMMARY_METRICS if name in points[0]]
    titles = [axis.rsplit(".", 1)[-1] for axis in axes] + ["G x V", "seeds"]
    titles += [SUMMARY_METRICS[name] for name in columns]
    if "probe_best_layer" in points[0]:
        titles.append("which layer is best")
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for point in points:
        cells = [str(point[axis]) for axis in axes] + [str(point["codebook_size"]), str(len(point["seeds"]))]
        cells += [str(point[name]) for name in columns]
        if "probe_best_layer" in point:
            cells.append(point["probe_best_layer"])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\nValues: mean over the point's seeds, [min, max] when they differ; chance: the accuracy of a guess "
        "among the distractors that count (one with its target's codewords is never counted); "
        "per-seed values in results.csv."
    )
    if missing:
        lines.append(f"\nnot finished: {', '.join(missing)}")
    return "\n".join(lines)
