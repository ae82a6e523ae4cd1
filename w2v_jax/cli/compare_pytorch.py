"""Loss curves of w2v_jax against transformers' Wav2Vec2ForPreTraining, step by step.

    w2v-compare-pytorch --config=pretrain.py:tiny --num_steps=100 \
        --workdir=runs/compare_tiny [--external=other_run/metrics.jsonl ...]

Both frameworks start from the same weights and get the same batches, masks, distractors and
Gumbel noise, the same AdamW, clipping, learning-rate and temperature schedules; dropout and
LayerDrop are off (their random draws can't be shared; see `w2v_jax.research.torch_twin`). Writes
`curves.csv`, `curves.png` and `summary.json` into the workdir and prints the summary line (the
largest relative gap between the smoothed curves). `--external` overlays the loss of any other
run (CSV with step,loss columns, or JSONL with step and loss keys).
"""

from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.cli.config_flag import define_config_flag
from w2v_jax.cli.launching import define_host_malloc_flag, launch
from w2v_jax.research import compare
from w2v_jax.training import host_memory


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv`: the command line, for the config's overrides)."""
    fv = flag_values
    return SimpleNamespace(
        config=define_config_flag("config", "pretrain.py:tiny", "Training config file, `path:variant`.", fv, argv),
        num_steps=flags.DEFINE_integer(
            "num_steps", 100, "Updates on each side (the schedules span them).", flag_values=fv
        ),
        workdir=flags.DEFINE_string("workdir", None, "Output folder.", required=True, flag_values=fv),
        external=flags.DEFINE_multi_string(
            "external", [], "Curve files of other runs to overlay (CSV or JSONL).", flag_values=fv
        ),
        window=flags.DEFINE_integer("window", 10, "Moving-average window of the smoothed curves.", flag_values=fv),
        host_malloc=define_host_malloc_flag(fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(args.host_malloc.value)
    summary = compare.run_comparison(
        args.config.value,
        args.num_steps.value,
        args.workdir.value,
        external=args.external.value,
        window=args.window.value,
    )
    print(summary["line"])


def run() -> None:
    """The `w2v-compare-pytorch` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
