"""wav2vec 2.0 pretraining launcher.

    w2v-pretrain --config=pretrain.py:tiny --workdir=runs/tiny
    w2v-pretrain --config=pretrain.py:base --workdir=runs/base \
        --config.train.batch_size=64 --config.data.train_manifest=/data/librispeech/train.tsv

Running the same command again on the same workdir resumes from its newest checkpoint; the
resolved config is written to WORKDIR/config.json. All logic is in
`w2v_jax.training.trainer.train_and_evaluate`.
"""

from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.cli.config_flag import define_config_flag
from w2v_jax.cli.launching import define_host_malloc_flag, launch
from w2v_jax.cli.run_faults import run_faults_exit
from w2v_jax.pretraining.task import PretrainingTask
from w2v_jax.training import host_memory, trainer


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv`: the command line, for the config's overrides)."""
    return SimpleNamespace(
        config=define_config_flag(
            "config", "pretrain.py:tiny", "Training config file, `path:variant`.", flag_values, argv
        ),
        workdir=flags.DEFINE_string(
            "workdir", None, "Directory for checkpoints, metrics and plots.", required=True, flag_values=flag_values
        ),
        host_malloc=define_host_malloc_flag(flag_values),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(args.host_malloc.value)
    with run_faults_exit(args.workdir.value):
        trainer.train_and_evaluate(args.config.value, args.workdir.value, PretrainingTask())


def run() -> None:
    """The `w2v-pretrain` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
