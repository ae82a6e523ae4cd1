"""wav2vec 2.0 CTC fine-tuning launcher.

    python -m experiments.finetune --config=experiments/configs/finetune.py:tiny --workdir=runs/ft_tiny
    python -m experiments.finetune --config=experiments/configs/finetune.py:base_10m --workdir=runs/ft \
        --config.init=runs/base --config.data.train_manifest=/data/ll10m/train.tsv

`--config.init` is the pretrained checkpoint (a pretraining workdir, our folder format or a
transformers folder; empty: random initialisation). Running the same command again resumes. The
workdir holds the vocabulary (vocab.json + tokenizer files), model_config.json, metrics, checkpoints
and the best model by the validation metric in best/. All logic is in `w2v_jax.finetuning` and the
shared loop `w2v_jax.trainer`.
"""

from absl import app, flags

from w2v_jax import finetuning, host_memory, trainer
from w2v_jax.cli import launch, run_faults_exit
from w2v_jax.configs import define_config_flag

_CONFIG = define_config_flag("config", "finetune.py:tiny", "Fine-tuning config file, `path:variant`.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.", required=True)
_HOST_MALLOC = flags.DEFINE_enum("host_malloc", "reuse", host_memory.MODES, host_memory.FLAG_HELP)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(_HOST_MALLOC.value)
    with run_faults_exit(_WORKDIR.value):
        trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value, task=finetuning.FineTuningTask())


def run() -> None:
    """The `w2v-finetune` command."""
    launch(main)


if __name__ == "__main__":
    run()
