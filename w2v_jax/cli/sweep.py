"""Runs a sweep config's grid point by point, then collects the results.

    python -m experiments.sweep --config=experiments/configs/codebook_ablation.py --workdir=runs/codebook
    python -m experiments.sweep --config=experiments/configs/codebook_ablation.py --workdir=runs/codebook \
        --print-commands     # print one experiments.pretrain command per point and exit
    python -m experiments.sweep --config=experiments/configs/codebook_ablation.py --workdir=runs/codebook \
        --collect-only       # after the cluster ran those commands

Points run one after another with the trainer's `train_and_evaluate`; running the command again
skips finished points and resumes an interrupted one from its checkpoint. `--config.*` overrides
apply to every point (and are repeated in the printed commands). Results, collected over every
finished point: validation metrics on `--valid_manifest` and the held-out-voice phone probe of
every layer (probe trained on `--probe_train_manifest`'s seen voices, scored on the
`--held_out_voices` and on the valid split's seen voices; `--noprobe` skips it), summarised over
the `train.seed` grid axis: `results.csv`, `results.md`, `results.png` and `results_curves.png` in
the workdir (see `w2v_jax.research.sweep`).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from w2v_jax import host_memory, trainer
from w2v_jax.cli import launch, run_faults_exit
from w2v_jax.configs import define_config_flag
from w2v_jax.data import default_manifest
from w2v_jax.data.utterances import load_utterances
from w2v_jax.research import probes, sweep

_CONFIG = define_config_flag("config", "codebook_ablation.py", "Sweep config file, `path[:variant]`.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's folder (one subfolder per point).", required=True)
_PRINT = flags.DEFINE_bool("print-commands", False, "Print one launcher command per point and exit.")
_COLLECT = flags.DEFINE_bool("collect-only", False, "Only collect the results of finished points.")
_VALID = flags.DEFINE_string("valid_manifest", None, "Validation manifest (default: embedded corpus valid split).")
_MAX_UTTERANCES = flags.DEFINE_integer(
    "max_utterances", None, "Validate on the first N utterances; at most N in each phone probe set."
)
_PROBE = flags.DEFINE_bool("probe", True, "Run the phone probe of every layer on each point's final checkpoint.")
_PROBE_TRAIN = flags.DEFINE_string(
    "probe_train_manifest", None, "The phone probe's train split (default: embedded corpus train split)."
)
_HELD_OUT_VOICES = flags.DEFINE_list(
    "held_out_voices", list(probes.DEFAULT_HELD_OUT_VOICES),
    "Voices (espeak-ng variants, e.g. m2) held out of the phone probe's training set; empty: none.",
)
_PROBE_STEPS = flags.DEFINE_integer("probe_steps", 300, "Adam iterations of each linear probe.")
_HOST_MALLOC = flags.DEFINE_enum("host_malloc", "reuse", host_memory.MODES, host_memory.FLAG_HELP)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(_HOST_MALLOC.value)
    config = _CONFIG.value
    if _PRINT.value:
        overrides = [arg for arg in sys.argv[1:] if arg.startswith("--config.")]
        config_path = config_flags.get_config_filename(flags.FLAGS["config"])
        print("\n".join(sweep.launch_commands(config, config_path, _WORKDIR.value, overrides)))
        return
    if not _COLLECT.value:
        with run_faults_exit(_WORKDIR.value):
            sweep.run_sweep(config, _WORKDIR.value, trainer.train_and_evaluate)
    valid = load_utterances(_VALID.value or default_manifest("valid"))
    probe_sets = None
    if _PROBE.value:
        train = load_utterances(_PROBE_TRAIN.value or default_manifest("train"))
        protocol = probes.HeldOutVoices(tuple(_HELD_OUT_VOICES.value))
        probe_sets = protocol.split(train, valid, max_utterances=_MAX_UTTERANCES.value)
    rows = sweep.collect_results(
        config, _WORKDIR.value, [u.waveform for u in valid[: _MAX_UTTERANCES.value]],
        probe_sets=probe_sets, probe_steps=_PROBE_STEPS.value,
    )
    print(sweep.results_table(rows))


def run() -> None:
    """The `w2v-sweep` command."""
    launch(main)


if __name__ == "__main__":
    run()
