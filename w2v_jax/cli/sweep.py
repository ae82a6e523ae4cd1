"""Runs a sweep config's grid point by point, then collects the results.

    w2v-sweep --config=codebook_ablation.py --workdir=runs/codebook
    w2v-sweep --config=codebook_ablation.py --workdir=runs/codebook \
        --print_commands     # print one w2v-pretrain command per point and exit
    w2v-sweep --config=codebook_ablation.py --workdir=runs/codebook \
        --collect_only       # after the cluster ran those commands

Points run one after another with the trainer's `train_and_evaluate` (pretraining); running the command again
skips finished points and resumes an interrupted one from its checkpoint. `--config.*` overrides
apply to every point (and are repeated in the printed commands). Results, collected over every
finished point: validation metrics on `--valid_manifest` and the held-out-voice phone probe of
every layer (probe trained on `--probe_train_manifest`'s seen voices, scored on the
`--held_out_voices` and on the valid split's seen voices; `--noprobe` skips it), summarised over
the `train.seed` grid axis: `results.csv`, `results.md`, `results.png` and `results_curves.png` in
the workdir (see `w2v_jax.research.sweep`).
"""

import functools
import sys
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags
from ml_collections import config_flags

from w2v_jax.cli.config_flag import define_config_flag
from w2v_jax.cli.launching import define_host_malloc_flag, launch
from w2v_jax.cli.probe_flags import define_probe_flags
from w2v_jax.cli.run_faults import run_faults_exit
from w2v_jax.data import default_manifest
from w2v_jax.data.utterances import load_utterances
from w2v_jax.pretraining.task import PretrainingTask
from w2v_jax.research import probes, sweep
from w2v_jax.training import host_memory, metrics, trainer


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv`: the command line, for the config's overrides)."""
    fv = flag_values
    return SimpleNamespace(
        config=define_config_flag("config", "codebook_ablation.py", "Sweep config file, `path[:variant]`.", fv, argv),
        workdir=flags.DEFINE_string(
            "workdir", None, "The sweep's folder (one subfolder per point).", required=True, flag_values=fv
        ),
        print_commands=flags.DEFINE_bool(
            "print_commands", False, "Print one launcher command per point and exit.", flag_values=fv
        ),
        collect_only=flags.DEFINE_bool(
            "collect_only", False, "Only collect the results of finished points.", flag_values=fv
        ),
        valid_manifest=flags.DEFINE_string(
            "valid_manifest", None, "Validation manifest (default: embedded corpus valid split).", flag_values=fv
        ),
        max_utterances=flags.DEFINE_integer(
            "max_utterances",
            None,
            "Validate on the first N utterances; at most N in each phone probe set.",
            flag_values=fv,
        ),
        probe=flags.DEFINE_bool(
            "probe", True, "Run the phone probe of every layer on each point's final checkpoint.", flag_values=fv
        ),
        probe_train_manifest=flags.DEFINE_string(
            "probe_train_manifest",
            None,
            "The phone probe's train split (default: embedded corpus train split).",
            flag_values=fv,
        ),
        curves_x=flags.DEFINE_enum(
            "curves_x",
            "step",
            list(metrics.X_AXES),
            "What results_curves.png draws the curves against: the step, the hours of audio seen, the model FLOPs.",
            flag_values=fv,
        ),
        **define_probe_flags(fv),
        host_malloc=define_host_malloc_flag(fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(args.host_malloc.value)
    config = args.config.value
    if args.print_commands.value:
        overrides = [arg for arg in sys.argv[1:] if arg.startswith("--config.")]
        config_path = config_flags.get_config_filename(flags.FLAGS["config"])
        print("\n".join(sweep.launch_commands(config, config_path, args.workdir.value, overrides)))
        return
    if not args.collect_only.value:
        with run_faults_exit(args.workdir.value):
            run_training = functools.partial(trainer.train_and_evaluate, task=PretrainingTask())
            sweep.run_sweep(config, args.workdir.value, run_training)
    valid = load_utterances(args.valid_manifest.value or default_manifest("valid"))
    probe_sets = None
    if args.probe.value:
        train = load_utterances(args.probe_train_manifest.value or default_manifest("train"))
        protocol = probes.HeldOutVoices(tuple(args.held_out_voices.value))
        probe_sets = protocol.split(train, valid, max_utterances=args.max_utterances.value)
    rows = sweep.collect_results(
        config,
        args.workdir.value,
        [u.waveform for u in valid[: args.max_utterances.value]],
        probe_sets=probe_sets,
        probe_steps=args.probe_steps.value,
        curves_x=args.curves_x.value,
    )
    print(sweep.results_table(rows))


def run() -> None:
    """The `w2v-sweep` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
