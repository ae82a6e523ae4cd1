"""Loss curves of w2v_jax against transformers' Wav2Vec2ForPreTraining, step by step.

    python -m experiments.compare_pytorch --config=experiments/configs/pretrain.py:tiny --steps=100 \
        --workdir=runs/compare_tiny [--external=other_run/metrics.jsonl ...]

Both frameworks start from the same weights and get the same batches, masks, distractors and
Gumbel noise, the same AdamW, clipping, learning-rate and temperature schedules; dropout and
LayerDrop are off (their random draws can't be shared; see `w2v_jax.research.torch_twin`). Writes
`curves.csv`, `curves.png` and `summary.json` into the workdir and prints the summary line (the
largest relative gap between the smoothed curves). `--external` overlays the loss of any other
run (CSV with step,loss columns, or JSONL with step and loss keys).
"""

from absl import app, flags

from w2v_jax import host_memory
from w2v_jax.cli import launch
from w2v_jax.configs import define_config_flag
from w2v_jax.research import compare

_CONFIG = define_config_flag("config", "pretrain.py:tiny", "Training config file, `path:variant`.")
_STEPS = flags.DEFINE_integer("steps", 100, "Updates on each side (the schedules span them).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.", required=True)
_EXTERNAL = flags.DEFINE_multi_string("external", [], "Curve files of other runs to overlay (CSV or JSONL).")
_WINDOW = flags.DEFINE_integer("window", 10, "Moving-average window of the smoothed curves.")
_HOST_MALLOC = flags.DEFINE_enum("host_malloc", "reuse", host_memory.MODES, host_memory.FLAG_HELP)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(_HOST_MALLOC.value)
    summary = compare.run_comparison(
        _CONFIG.value, _STEPS.value, _WORKDIR.value, external=_EXTERNAL.value, window=_WINDOW.value
    )
    print(summary["line"])


def run() -> None:
    """The `w2v-compare-pytorch` command."""
    launch(main)


if __name__ == "__main__":
    run()
