"""w2v_jax.research.compare (experiments.compare_pytorch): our train step's curves against the PyTorch twin's."""

import csv
import json
import re

import numpy as np
import pytest

from w2v_jax.configs import pretrain
from w2v_jax.research import compare


def _batches(rows: int, samples: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    while True:
        yield {
            "input_values": rng.randn(rows, samples).astype(np.float32),
            "attention_mask": np.ones((rows, samples), np.int32),
        }


def test_smooth_is_a_trailing_mean():
    values = np.random.RandomState(0).rand(12)
    expected = [values[max(0, i - 3) : i + 1].mean() for i in range(12)]
    np.testing.assert_allclose(compare.smooth(values, 4), expected, rtol=1e-12)
    np.testing.assert_allclose(compare.smooth(values, 1), values)
    with pytest.raises(ValueError, match="window"):
        compare.smooth(values, 0)


def test_relative_gaps_find_the_worst_step():
    records = [{"step": s + 1, "loss_jax": 2.0, "loss_pytorch": 2.0 + (0.2 if s == 5 else 0.0)} for s in range(8)]
    gaps = compare.relative_gaps(records, window=1, metrics=("loss",))
    assert gaps["loss"] == (pytest.approx(0.2 / 2.2), 6)
    # Smoothing spreads and shrinks a one-step blip.
    smoothed = compare.relative_gaps(records, window=4, metrics=("loss",))
    assert smoothed["loss"][0] < gaps["loss"][0]


def test_read_curve_file_csv_and_jsonl(tmp_path):
    (tmp_path / "run.csv").write_text("step,loss,other\n1,3.5,x\n2,3.0,y\n3,,z\n")
    steps, values = compare.read_curve_file(tmp_path / "run.csv")
    np.testing.assert_array_equal(steps, [1, 2])
    np.testing.assert_array_equal(values, [3.5, 3.0])
    lines = ['{"step": 10, "loss": 1.5}', '{"step": 20, "loss": null}', '{"step": 30, "loss": 1.0}']
    (tmp_path / "run.jsonl").write_text("\n".join(lines) + "\n")
    steps, values = compare.read_curve_file(tmp_path / "run.jsonl")
    np.testing.assert_array_equal(steps, [10, 30])
    (tmp_path / "bad.csv").write_text("epoch,value\n1,2\n")
    with pytest.raises(ValueError, match="step"):
        compare.read_curve_file(tmp_path / "bad.csv")
    (tmp_path / "run.txt").write_text("step loss\n1 2\n")
    with pytest.raises(ValueError, match="must be"):
        compare.read_curve_file(tmp_path / "run.txt")
    with pytest.raises(ValueError, match="does not exist"):
        compare.read_curve_file(tmp_path / "missing.csv")
    (tmp_path / "rows.jsonl").write_text('{"step": 10, "loss": 1.5}\n3.0\n')
    name = re.escape(str(tmp_path / "rows.jsonl"))
    with pytest.raises(
        ValueError, match=rf"^{name}: expected a JSON object at the top level, found a number \(line 2\)$"
    ):
        compare.read_curve_file(tmp_path / "rows.jsonl")


def test_comparison_settings_make_a_comparable_run():
    config = compare.comparison_settings(pretrain.get_config("tiny"), 7)
    assert config.train.num_steps == 7 and config.train.warmup_steps == 7
    assert config.model.hidden_dropout == 0.0 and config.model.feature_penalty_weight == 0.0
    with pytest.raises(ValueError, match="at least one step"):
        compare.comparison_settings(pretrain.get_config("tiny"), 0)


@pytest.mark.slow
def test_curves_agree_to_float_noise(tmp_path):
    """Four train-mode steps (warmup then decay, Gumbel sampling, clipping) from the same weights:
    every curve, the gradient norm's included, agrees within 1.2e-6 relative (float32 rounding),
    and the outputs are written."""
    config = pretrain.get_config("tiny")
    config.train.batch_size = 2
    config.train.warmup_steps = 2
    external = tmp_path / "external.csv"
    external.write_text("step,loss\n1,2.0\n4,1.5\n")
    summary = compare.run_comparison(
        config, 4, tmp_path / "out", external=[external], window=2, batches=_batches(2, 16000)
    )
    # Measured: every curve, grad_norm included, within 3.9e-7 relative at every step (float32
    # rounding of the two frameworks' reductions); the bounds are 3x that.
    for name, gap in summary["gaps"].items():
        assert gap["gap"] < 1.2e-6, (name, gap)
    # The control run starts one ulp away: a gap of float-rounding size, but not zero.
    assert 0.0 < max(g["gap"] for g in summary["control_gaps"].values()) < 1e-4
    assert "largest relative gap" in summary["line"] and "1-ulp" in summary["line"]
    with open(tmp_path / "out" / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert "grad_norm" in compare.CURVE_METRICS  # the gradients are compared at every step, not only the losses
    for name in compare.CURVE_METRICS:
        jax_values = np.array([float(r[f"{name}_jax"]) for r in rows])
        torch_values = np.array([float(r[f"{name}_pytorch"]) for r in rows])
        np.testing.assert_allclose(jax_values, torch_values, rtol=1.2e-6, atol=1e-7)
    learning_rates = [float(r["learning_rate_jax"]) for r in rows]
    assert learning_rates[0] == 0.0 and max(learning_rates) == pytest.approx(config.train.learning_rate)
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["num_steps"] == 4
