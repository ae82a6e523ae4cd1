"""The tiny fine-tuning run the tests share: `python -m experiments.finetune` with `OVERRIDES`, built
once per session (`launchers.shared_run`) and only read by the tests that use it."""

import pathlib

from tests.support import launchers

NUM_STEPS = 40
OVERRIDES = [
    "--config=experiments/configs/finetune.py:tiny",
    f"--config.train.num_steps={NUM_STEPS}",
    "--config.train.batch_size=4",
    "--config.train.log_every=10",
    "--config.train.eval_every=20",
    "--config.train.checkpoint_every=10",
    "--config.train.freeze_finetune_updates=0",  # the mechanics of a run in which every part learns
]


def run(module: str, args: list[str], env: dict[str, str]):
    """`launchers.run`, asserting that the command succeeded (its stderr's end in the message)."""
    result = launchers.run(module, args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def reference_run(session_dir: pathlib.Path, env: dict[str, str]) -> pathlib.Path:
    """The workdir of the shared run of `OVERRIDES`."""

    def build(workdir: pathlib.Path) -> None:
        run("experiments.finetune", [f"--workdir={workdir}", *OVERRIDES], env)

    return launchers.shared_run(session_dir / "finetune_reference", build)
