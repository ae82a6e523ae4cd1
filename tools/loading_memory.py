"""Peak resident memory of loading a training workdir's model, as transcription, evaluation and
export load it (`checkpoints.load_model`). Prints the figures docs/checkpoints.md quotes.

    python -m tools.loading_memory --variant=base --workdir=/tmp/base_run --runs=5 \\
        [--other_source=/path/to/another/checkout]

`--workdir` gets a pretraining run directory of the config variant (its `config.json` and one
checkpoint of the initial train state: parameters, Adam's two moments filled with random values as a
trained run's are, counters) unless it holds one already. Each run is then a fresh process that
imports the loader, starts JAX and loads the model; its peak resident set size (Linux's `VmHWM`) is
the figure. Beside it, a process that does all of that but the load gives the baseline (Python, JAX and
the package). `--other_source` measures another version of the package (a checkout whose `w2v_jax/`
goes first on the path) on the same workdir, the two versions' processes alternating, so both see
the same machine.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import subprocess
import sys
from collections.abc import Sequence
from types import SimpleNamespace

import jax
from absl import flags

from w2v_jax import sharding
from w2v_jax.checkpoints.checkpointer import Checkpointer, has_checkpoints
from w2v_jax.checkpoints.run_layout import CHECKPOINTS_DIR, CONFIG_FILE
from w2v_jax.cli import launch
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.training import optim, train_step

# One measured process: argv [workdir, "load" | "baseline"]; prints the package's folder and the
# process's peak resident set size in KiB. Linux's VmHWM, not ru_maxrss: a child's ru_maxrss starts
# from its parent's resident size at the fork, VmHWM from the new program's.
_MEASURED = """
import sys
import jax
from flax import nnx
import w2v_jax
from w2v_jax.checkpoints import load_model
jax.devices()
if sys.argv[2] == "load":
    jax.block_until_ready(nnx.state(load_model(sys.argv[1])))
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(w2v_jax.__path__[0], peak)
"""


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The tool's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    return SimpleNamespace(
        variant=flags.DEFINE_enum(
            "variant",
            "base",
            list(pretrain_config.VARIANTS),
            "The pretraining config variant (its model preset).",
            flag_values=flag_values,
        ),
        workdir=flags.DEFINE_string(
            "workdir", None, "The run directory to load (written first when it holds none).", flag_values=flag_values
        ),
        runs=flags.DEFINE_integer("runs", 5, "Measured processes per version.", lower_bound=1, flag_values=flag_values),
        other_source=flags.DEFINE_string(
            "other_source",
            "",
            "A checkout of another version of the package, measured alternately.",
            flag_values=flag_values,
        ),
    )


def write_workdir(workdir: pathlib.Path, variant: str) -> None:
    """A pretraining run directory of the config variant `variant` with checkpoint 1 of its initial
    train state."""
    config = pretrain_config.get_config(variant)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    _, state, _ = train_step.create_train_state(
        Wav2Vec2Config.from_run_config(config),
        optim.optimizer_from_train_config(config.train),
        model_class=Wav2Vec2ForPreTraining,
        seed=0,
        mesh=sharding.make_mesh(devices=jax.devices()[:1]),
    )
    # A trained run's moments are not zeros, which orbax would store in next to no bytes.
    leaves, treedef = jax.tree.flatten(state.opt_state)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    moments = [
        jax.random.uniform(key, x.shape, x.dtype, 0.0, 1e-3) if x.ndim else x
        for key, x in zip(keys, leaves, strict=True)
    ]
    checkpoints = Checkpointer(workdir / CHECKPOINTS_DIR, async_save=False)
    checkpoints.save(1, state.replace(opt_state=jax.tree.unflatten(treedef, moments)), {})
    checkpoints.close()


def measured_process(script: str, args: Sequence[str], cwd: pathlib.Path, source: str) -> tuple[str, float]:
    """(the measured package's folder, peak RSS in MiB) of one fresh `python -c script *args` process
    that prints them last (the folder, then `VmHWM` in KiB), with the package of checkout `source`
    first on the path ("" = the installed one)."""
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH", "")) if p)
    # Run from `cwd`, a data folder: `python -c` puts its folder first on the path, where no package is.
    out = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[-2], int(out[-1]) / 1024


def _peak_mib(workdir: pathlib.Path, what: str, source: str) -> tuple[str, float]:
    """(the measured package's folder, peak RSS in MiB) of one fresh process."""
    return measured_process(_MEASURED, [str(workdir.resolve()), what], workdir, source)


def peak_memory(workdir: pathlib.Path, runs: int, sources: Sequence[str] = ("",)) -> dict[str, dict[str, float]]:
    """Median peak RSS (MiB) of `runs` processes loading `workdir`'s model and of `runs` baseline
    processes, per package source ("" = the installed one), the sources' processes alternating.

    Returns:
      {package folder: {"load_mib", "baseline_mib", "load_minus_baseline_mib"}}.
    """
    samples: dict[str, dict[str, list[float]]] = {}
    for _ in range(runs):
        for source in sources:
            for what in ("load", "baseline"):
                package, mib = _peak_mib(workdir, what, source)
                samples.setdefault(package, {"load": [], "baseline": []})[what].append(mib)
    figures = {}
    for package, measured in samples.items():
        load, baseline = statistics.median(measured["load"]), statistics.median(measured["baseline"])
        figures[package] = {"load_mib": load, "baseline_mib": baseline, "load_minus_baseline_mib": load - baseline}
    return figures


def main(argv: list[str], args: SimpleNamespace) -> None:
    del argv
    if not args.workdir.value:
        raise SystemExit("--workdir is required")
    workdir = pathlib.Path(args.workdir.value)
    if not has_checkpoints(workdir / CHECKPOINTS_DIR):
        write_workdir(workdir, args.variant.value)
    sources = ("", args.other_source.value) if args.other_source.value else ("",)
    for package, f in peak_memory(workdir, args.runs.value, sources).items():
        print(
            f"{package}: load_model peak RSS {f['load_mib']:.0f} MiB, baseline {f['baseline_mib']:.0f} MiB, "
            f"loading adds {f['load_minus_baseline_mib']:.0f} MiB (medians of {args.runs.value} processes)"
        )


def run() -> None:
    """`python -m tools.loading_memory`."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
