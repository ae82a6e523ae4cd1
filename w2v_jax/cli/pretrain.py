"""wav2vec 2.0 pretraining launcher.

    python -m experiments.pretrain --config=experiments/configs/pretrain.py:tiny --workdir=runs/tiny
    python -m experiments.pretrain --config=experiments/configs/pretrain.py:base --workdir=runs/base \
        --config.train.batch_size=64 --config.data.train_manifest=/data/librispeech/train.tsv

Running the same command again on the same workdir resumes from its newest checkpoint; the
resolved config is written to WORKDIR/config.json. All logic is in
`w2v_jax.trainer.train_and_evaluate`.
"""

from absl import app, flags

from w2v_jax import host_memory, trainer
from w2v_jax.cli import launch, run_faults_exit
from w2v_jax.configs import define_config_flag

_CONFIG = define_config_flag("config", "pretrain.py:tiny", "Training config file, `path:variant`.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.", required=True)
_HOST_MALLOC = flags.DEFINE_enum("host_malloc", "reuse", host_memory.MODES, host_memory.FLAG_HELP)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(_HOST_MALLOC.value)
    with run_faults_exit(_WORKDIR.value):
        trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run() -> None:
    """The `w2v-pretrain` command."""
    launch(main)


if __name__ == "__main__":
    run()
