"""Logging-window reductions: averages over finite steps, summed counts, ratios divided once."""

import math

import pytest

from w2v_jax import trainer
from w2v_jax.metrics import mean_metrics


def _step(loss, correct, masked, skipped=0):
    return {
        "loss": loss,
        "accuracy": correct / masked,
        "num_correct": correct,
        "num_masked": masked,
        "skipped_nonfinite": skipped,
    }


def test_ratio_is_summed_counts_divided_once_over_finite_steps():
    window = [_step(1.0, 9, 10), _step(3.0, 10, 100), _step(float("nan"), 5, 5, skipped=1)]
    out = mean_metrics(
        window, summed=("num_masked", "num_correct", "skipped_nonfinite"),
        ratios={"accuracy": ("num_correct", "num_masked")},
    )
    assert out["accuracy"] == pytest.approx(19 / 110)  # not the mean of 0.9 and 0.1
    assert out["loss"] == pytest.approx(2.0)
    assert out["num_masked"] == 115 and out["num_correct"] == 24 and out["skipped_nonfinite"] == 1


def test_steps_restored_without_counts_weigh_their_ratio_by_the_denominator():
    old = {k: v for k, v in _step(1.0, 9, 10).items() if k != "num_correct"}
    out = mean_metrics([old, _step(1.0, 10, 100)], ratios={"accuracy": ("num_correct", "num_masked")})
    assert out["accuracy"] == pytest.approx(19 / 110)
    only_skipped = mean_metrics([_step(1.0, 1, 2, skipped=1)], ratios={"accuracy": ("num_correct", "num_masked")})
    assert math.isnan(only_skipped["accuracy"])


def test_trainer_logs_accuracy_as_a_ratio_of_window_sums():
    window = [
        {**_step(1.0, 9, 10), "nonfinite_total": 0, "nonfinite_consecutive": 0},
        {**_step(2.0, 10, 100), "nonfinite_total": 0, "nonfinite_consecutive": 0},
    ]
    record = trainer._summarize(window)
    assert record["accuracy"] == pytest.approx(19 / 110)
    assert record["num_correct"] == 19 and record["num_masked"] == 110


def test_a_window_with_skipped_steps():
    # Skipped steps are left out of every average and ratio but counted; the counters come from
    # the window's last step.
    window = [
        {**_step(1.0, 9, 10), "nonfinite_total": 0, "nonfinite_consecutive": 0},
        {**_step(float("nan"), 0, 7, skipped=1), "nonfinite_total": 1, "nonfinite_consecutive": 1},
        {**_step(2.0, 3, 30), "nonfinite_total": 1, "nonfinite_consecutive": 0},
        {**_step(float("inf"), 0, 20, skipped=1), "nonfinite_total": 2, "nonfinite_consecutive": 1},
    ]
    record = trainer._summarize(window)
    assert record["loss"] == pytest.approx(1.5)
    assert record["accuracy"] == pytest.approx(12 / 40)
    assert record["skipped_nonfinite"] == 2
    assert record["nonfinite_total"] == 2 and record["nonfinite_consecutive"] == 1
    all_skipped = trainer._summarize(window[1:2])
    assert math.isnan(all_skipped["loss"]) and math.isnan(all_skipped["accuracy"])
    assert all_skipped["skipped_nonfinite"] == 1
