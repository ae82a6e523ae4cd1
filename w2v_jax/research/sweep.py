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
checkpoint on a validation set (`validation.validation_metrics`) and writes `results.csv`,
`results.md` and `results.png`.
"""

from __future__ import annotations

import csv
import itertools
import os
import pathlib
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from w2v_jax import metrics as metrics_lib
from w2v_jax import checkpointing
from w2v_jax.research import plotting, validation

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"


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
    metrics_file = folder / metrics_lib.METRICS_FILE
    return (folder / "checkpoints" / str(num_steps)).is_dir() and metrics_file.is_file()


def launch_commands(
    config: ml_collections.ConfigDict,
    config_path: str,
    workdir: str | os.PathLike,
    extra_flags: Sequence[str] = (),
    launcher: str = "python -m experiments.pretrain",
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
    load_model: Callable[[pathlib.Path], Any] = checkpointing.load_model,
) -> list[dict[str, Any]]:
    """One row per finished point: its grid values, last logged training metrics, validation metrics.

    Writes `results.csv`, `results.md` and `results.png` (validation loss, code perplexity and
    share of codewords used against the codebook size G x V, one line per G) into `workdir`.
    Unfinished points are listed in the markdown table as missing.

    Args:
      config: the sweep config.
      workdir: the sweep's folder.
      valid_waveforms: held-out audio for `validation.validation_metrics`.
      load_model: folder -> model (default: the final checkpoint of a training workdir).
    """
    workdir = pathlib.Path(workdir)
    rows, missing = [], []
    for point in expand_grid(config.grid):
        folder = workdir / point_name(point)
        point_config = apply_point(config, point)
        if not is_finished(folder, point_config.train.num_steps):
            missing.append(point_name(point))
            continue
        last = metrics_lib.read_metrics(folder / metrics_lib.METRICS_FILE)[-1]
        groups = point_config.model.num_codevector_groups
        num_vars = point_config.model.num_codevectors_per_group
        valid = validation.validation_metrics(load_model(folder), valid_waveforms, seed=point_config.train.seed)
        rows.append(
            {
                **point,
                "codebook_size": groups * num_vars,
                "step": last["step"],
                "train_loss": last["loss"],
                "train_accuracy": last["accuracy"],
                "train_code_perplexity": last["code_perplexity"],
                "valid_loss": valid.loss,
                "valid_accuracy": valid.accuracy,
                "valid_code_perplexity": valid.code_perplexity,
                "used_fraction": valid.used_fraction,
                "chance_accuracy": valid.chance_accuracy,
            }
        )
    if rows:
        with open(workdir / RESULTS_CSV, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        plotting.plot_sweep_results(rows, workdir / RESULTS_PNG)
    (workdir / RESULTS_MD).write_text(results_table(rows, missing) + "\n", encoding="utf-8")
    return rows


def results_table(rows: Sequence[Mapping[str, Any]], missing: Sequence[str] = ()) -> str:
    """A markdown table of `collect_results` rows (floats with 4 significant digits)."""
    if not rows:
        return "no finished points" + (f"; missing: {', '.join(missing)}" if missing else "")
    names = list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    if missing:
        lines.append(f"\nnot finished: {', '.join(missing)}")
    return "\n".join(lines)
