"""The accelerator check: one call on a lent GPU machine, its results in one folder and one archive.

    python -m experiments.accelerator_check --output=$OUT/check
    python -m experiments.accelerator_check --output=/tmp/check --dry_run

Steps in priority order, each with its own time cap inside `--budget_s`: (1) devices, versions, API
compatibility, an import of every module, tiny forward and train steps, the bf16 matmul rate; (2) the
base benchmark in bf16 then float32 against transformers at the batch that fills the device; (3) the
accelerator-relevant test files; (4) a short bf16 pretraining that must leave chance. `--dry_run`
runs 1, 2 and 4 on the CPU with tiny sizes and 3 as collection only. Exits 1 when anything failed
(listed last). docs/performance.md has the
device command (wheels first: `tools/device_wheels.py`). All logic: `w2v_jax.research.accelerator_check`.
Older spelling accepted: `--dry-run`.
"""

import pathlib
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.cli import alias, launch
from w2v_jax.research import accelerator_check


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` unused: no config flag)."""
    fv = flag_values
    args = SimpleNamespace(
        output=flags.DEFINE_string("output", "accelerator_check", "Folder of the results.", flag_values=fv),
        dry_run=flags.DEFINE_bool(
            "dry_run", False, "CPU, tiny sizes, tests collected only (about a minute).", flag_values=fv
        ),
        budget_s=flags.DEFINE_float("budget_s", 540.0, "Wall-time limit of the whole check.", flag_values=fv),
        seconds=flags.DEFINE_float("seconds", 15.0, "The benchmark's utterance length.", flag_values=fv),
        pretrain_steps=flags.DEFINE_integer("pretrain_steps", 300, "Updates of the pretraining step.", flag_values=fv),
        pretrain_batch=flags.DEFINE_integer("pretrain_batch", 32, "Batch of the pretraining step.", flag_values=fv),
        steps=flags.DEFINE_list("steps", ["1", "2", "3", "4"], "Which steps to run (e.g. 2,4).", flag_values=fv),
    )
    alias(fv, ("dry-run", "dry_run"))
    return args


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = accelerator_check.CheckSettings(
        output=pathlib.Path(args.output.value),
        dry_run=args.dry_run.value,
        budget_seconds=args.budget_s.value,
        seconds=args.seconds.value,
        pretrain_steps=args.pretrain_steps.value,
        pretrain_batch=args.pretrain_batch.value,
        steps=tuple(int(step) for step in args.steps.value),
    )
    summary = accelerator_check.run_check(settings, print_fn=lambda line: print(line, flush=True))
    for line in accelerator_check.summary_lines(summary):
        print(line, flush=True)
    problems = accelerator_check.problems(summary)
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems), flush=True)
        raise SystemExit(1)


def run() -> None:
    """The `w2v-accelerator-check` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
