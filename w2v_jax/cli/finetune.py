"""wav2vec 2.0 CTC fine-tuning launcher.

    w2v-finetune --config=finetune.py:tiny --workdir=runs/ft_tiny
    w2v-finetune --config=finetune.py:base_10m --workdir=runs/ft \
        --config.init=runs/base --config.data.train_manifest=/data/ll10m/train.tsv

`--config.init` is the pretrained checkpoint (a pretraining workdir, our folder format or a
transformers folder; empty: random initialisation). Running the same command again resumes. The
workdir holds the vocabulary (vocab.json + tokenizer files), model_config.json, metrics, checkpoints
and the best model by the validation metric in best/. All logic is in `w2v_jax.asr.task` and the
shared loop `w2v_jax.training.trainer`.
"""

from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.asr.task import FineTuningTask
from w2v_jax.cli.config_flag import define_config_flag
from w2v_jax.cli.launching import define_host_malloc_flag, launch
from w2v_jax.cli.run_faults import run_faults_exit
from w2v_jax.training import host_memory, trainer


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv`: the command line, for the config's overrides)."""
    return SimpleNamespace(
        config=define_config_flag(
            "config", "finetune.py:tiny", "Fine-tuning config file, `path:variant`.", flag_values, argv
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
        trainer.train_and_evaluate(args.config.value, args.workdir.value, task=FineTuningTask())


def run() -> None:
    """The `w2v-finetune` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
