"""The failure monitor from the launcher: a provoked tiny run (no diversity loss at a high learning
rate) names its codebook collapse and, with `train.health=stop`, exits 1 after that step's checkpoint;
the main command's healthy run raises nothing."""

import pytest

from tests.support.launchers import run
from w2v_jax.pretraining.task import CodebookCollapse
from w2v_jax.training import metrics


@pytest.mark.slow
def test_a_provoked_collapse_is_named_logged_recorded_and_stops_the_run(env, tmp_path):
    result = run(
        "experiments.pretrain",
        [
            "--config=experiments/configs/pretrain.py:tiny",
            f"--workdir={tmp_path}",
            "--config.model.diversity_loss_weight=0",
            "--config.train.learning_rate=0.05",
            "--config.train.warmup_steps=2",
            "--config.train.num_steps=40",
            "--config.train.batch_size=4",
            "--config.train.log_every=2",
            "--config.train.eval_every=0",
            "--config.train.health=stop",
            "--config.data.max_sample_size=16000",
            "--config.data.min_sample_size=16000",
        ],
        env,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    records = metrics.read_metrics(tmp_path / metrics.METRICS_FILE)
    last = records[-1]
    assert last["step"] < 40 and last["health"] == [CodebookCollapse.name]
    assert all("health" not in r for r in records[:-1])  # present only when a condition holds
    # The window's three records all had the collapsed perplexity (<= 2 x 2 groups).
    assert all(r["code_perplexity"] <= 4.0 for r in records[-3:]) and records[-4]["code_perplexity"] > 4.0
    assert (tmp_path / "checkpoints" / str(last["step"])).is_dir()
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"training stopped: train.health=stop: health: codebook_collapse at step {last['step']}")
    assert "model.diversity_loss_weight" in message and f"checkpoint {last['step']} saved" in message


@pytest.mark.slow
def test_the_main_commands_healthy_run_raises_nothing(tiny_pretraining):
    records = metrics.read_metrics(tiny_pretraining / metrics.METRICS_FILE)
    # The fixture logs every 50 updates: six records, each the mean over its window.
    assert [r["step"] for r in records] == list(range(50, 301, 50))
    assert all("health" not in r for r in records), [r.get("health") for r in records]
