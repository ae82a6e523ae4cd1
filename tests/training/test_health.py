"""The failure monitor (w2v_jax.training.health) and the loop's own detectors on synthetic metric
streams: each fires after its window, a healthy stream raises none, a replayed prefix reports what the
uninterrupted stream reports, the monitor runs whatever detectors it is given. Pretraining's and
fine-tuning's own detectors: tests/pretraining/test_task.py, tests/asr/test_task.py."""

import numpy as np
import pytest
from matplotlib.image import imread

from tests.support.health import (
    GENERIC_CASES,
    WINDOW,
    LossAbove,
    check_fires_after_its_window,
    healthy_stream,
    observe,
    spoiled,
)
from w2v_jax.configs import pretrain as pretrain_config
from w2v_jax.pretraining.task import PANELS, CodebookCollapse
from w2v_jax.training import health, metrics


def generic():
    return [health.GradNormCollapse(), health.Divergence()]


def test_a_healthy_stream_raises_nothing():
    monitor, names = observe(generic(), healthy_stream())
    assert names == [[]] * 40
    assert monitor.summary() == "no failure detected"


@pytest.mark.parametrize("condition, change, evidence", GENERIC_CASES)
def test_each_condition_fires_after_its_window_with_evidence_and_advice(condition, change, evidence):
    check_fires_after_its_window(generic(), condition, change, evidence)


def test_replaying_a_prefix_reports_what_the_uninterrupted_stream_reports():
    records = spoiled(lambda r, i: r.update(grad_norm=1e-4), at=15)
    _, expected = observe(generic(), records)
    for cut in (10, 16, 17, 25):
        monitor = health.HealthMonitor(generic(), window=WINDOW)
        monitor.replay(records[:cut])
        assert [[f.name for f in monitor.observe(r)] for r in records[cut:]] == expected[cut:]


def test_the_monitor_runs_the_detectors_it_is_given_in_their_order():
    records = [{"step": step, "loss": 10.0, "skipped_nonfinite": 1} for step in range(1, 6)]
    monitor, names = observe([health.Divergence(), LossAbove(1.0)], records)
    assert names == [[]] * (WINDOW - 1) + [["divergence", "loss_above"]] * 3
    assert monitor.summary() == "divergence (steps 3-5, 3 records), loss_above (steps 3-5, 3 records)"
    _, names = observe([LossAbove(1.0), health.Divergence()], records)
    assert names[-1] == ["loss_above", "divergence"]
    assert observe([LossAbove(20.0)], records)[1] == [[]] * 5
    with pytest.raises(ValueError, match="health_window must be >= 1"):
        health.HealthMonitor(generic(), window=0)
    with pytest.raises(ValueError, match=r"one detector, got \['divergence', 'divergence'\]"):
        health.HealthMonitor([health.Divergence(), health.Divergence()])


def test_an_early_spike_or_dip_flags_nothing():
    # One clipped spike of the gradient norm (1, 1.2, 300, 1, ...) and one record of short, easy
    # utterances (a loss far below its neighbours) move no median.
    records = healthy_stream()
    records[2]["grad_norm"] = 300.0
    records[4]["loss"] = 0.1
    monitor, names = observe(generic(), records)
    assert names == [[]] * 40 and monitor.summary() == "no failure detected"


def test_the_warmup_flags_nothing():
    # The gradient norm falls from 50 to 0.2 through a 20-record warmup (250x, at most 1.4x per
    # record), the loss from 8 to the healthy stream's 1.6 in 5 records.
    records = healthy_stream()
    for i, record in enumerate(records[:20]):
        record["grad_norm"] = 50.0 * (0.2 / 50.0) ** (i / 19)
    for i, record in enumerate(records[:5]):
        record["loss"] = 8.0 - 1.6 * i
    assert observe(generic(), records)[1] == [[]] * 40


def test_a_collapse_holds_until_the_norm_recovers_and_a_slow_divergence_is_caught():
    records = spoiled(lambda r, i: r.update(grad_norm=1e-4), at=15)
    for record in records[35:]:
        record["grad_norm"] = 1.0
    names = observe(generic(), records)[1]
    assert [i for i, n in enumerate(names) if n] == list(range(15 + WINDOW - 1, 35))
    # The loss creeping from 1.3 to 3.9 over 20 records: the lowest median is kept from before.
    records = spoiled(lambda r, i: r.update(loss=1.3 * 1.06**i), at=20)
    names = observe(generic(), records)[1]
    losses = [r["loss"] for r in records]
    lowest = [min(np.median(losses[j - 5 : j]) for j in range(5, i + 1)) for i in range(5, 40)]
    first = next(i for i in range(20, 40) if losses[i] > 2 * lowest[i - 5])
    assert first < 40 - WINDOW
    assert not any(names[: first + WINDOW - 1]) and names[first + WINDOW - 1 :] == [["divergence"]] * (
        41 - first - WINDOW
    )


def test_the_recent_records_are_a_setting():
    config = pretrain_config.get_config("tiny")
    config.train.health_recent = 8
    grad, divergence = health.loop_detectors(config, loss="loss_per_token")
    assert (grad.recent, divergence.recent, divergence.loss) == (8, 8, "loss_per_token")
    with pytest.raises(ValueError, match="health_recent must be >= 1"):
        health.Divergence(recent=0)


def test_the_loss_curve_marks_unhealthy_steps(tmp_path):
    records = healthy_stream(20)
    clean, marked = tmp_path / "clean.png", tmp_path / "marked.png"
    metrics.plot_loss_curve(records, clean, PANELS)
    for r in records[10:]:
        r["health"] = [CodebookCollapse.name]
    metrics.plot_loss_curve(records, marked, PANELS)
    a, b = imread(clean), imread(marked)
    redder = (b[..., 0] - b[..., 1]) - (a[..., 0] - a[..., 1])
    assert a.shape == b.shape and np.count_nonzero(redder > 0.05) > 1000
