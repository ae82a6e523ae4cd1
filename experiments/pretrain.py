"""wav2vec 2.0 pretraining launcher.

    python -m experiments.pretrain --config=experiments/configs/pretrain.py:tiny --workdir=runs/tiny
    python -m experiments.pretrain --config=experiments/configs/pretrain.py:base --workdir=runs/base \
        --config.train.batch_size=64 --config.data.train_manifest=/data/librispeech/train.tsv

Running the same command again on the same workdir resumes from its newest checkpoint; the
resolved config is written to WORKDIR/config.json. All logic is in
`w2v_jax.trainer.train_and_evaluate`.
"""

from absl import app, flags

from experiments.configs import define_config_flag
from w2v_jax import host_memory, trainer

_CONFIG = define_config_flag("config", "experiments/configs/pretrain.py:tiny", "Training config file, `path:variant`.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.", required=True)
_HOST_MALLOC = flags.DEFINE_enum("host_malloc", "reuse", host_memory.MODES, host_memory.FLAG_HELP)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(_HOST_MALLOC.value)
    trainer.run_from_command_line(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
