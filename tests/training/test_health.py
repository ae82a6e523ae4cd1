"""The failure detectors (w2v_jax.training.health) on synthetic metric streams: each fires after its
window, a healthy stream raises none, a replayed prefix reports what the uninterrupted stream reports."""

import numpy as np
import pytest
from matplotlib.image import imread

from w2v_jax.training import health, metrics

WINDOW = 3


def healthy_stream(num_records=40, *, start=1):
    """A pretraining run's records as they look when it learns: loss from chance (ln 5) down,
    accuracy up, code perplexity falling from G x V = 16 but far above G = 2, grad norm noisy near 1."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(start, start + num_records):
        progress = i / num_records
        loss = 1.61 - 0.4 * progress + 0.03 * rng.standard_normal()
        records.append(
            {
                "step": 10 * i,
                "loss": loss,
                "contrastive_loss": loss - 0.02,
                "accuracy": 0.2 + 0.25 * progress,
                "code_perplexity": 15.0 - 6.0 * progress,
                "grad_norm": 1.0 + 0.3 * rng.standard_normal(),
                "skipped_nonfinite": 0,
            }
        )
    return records


def run(records, **kwargs):
    monitor = health.HealthMonitor(num_groups=2, window=WINDOW, **kwargs)
    return monitor, [[f.name for f in monitor.observe(r)] for r in records]


def test_a_healthy_stream_raises_nothing():
    monitor, names = run(healthy_stream())
    assert names == [[]] * 40
    assert monitor.summary() == "no failure detected"


def spoiled(change, at=20):
    """The healthy stream with `change(record, i)` applied from record `at` on."""
    records = healthy_stream()
    for i, record in enumerate(records[at:]):
        change(record, i)
    return records


@pytest.mark.parametrize(
    "condition, change, evidence",
    [
        (
            health.CODEBOOK_COLLAPSE,
            lambda r, i: r.update(code_perplexity=3.5 - 0.05 * i),
            "code perplexity 3.40 <= 2 x 2 groups",
        ),
        (
            health.TRIVIAL_SOLUTION,
            lambda r, i: r.update(contrastive_loss=0.01, loss=0.09, accuracy=0.995),
            "contrastive loss 0.0100, accuracy 0.995",
        ),
        (health.GRAD_NORM_COLLAPSE, lambda r, i: r.update(grad_norm=1e-3), "grad norm 0.001 < 0.01 x its peak"),
        (health.DIVERGENCE, lambda r, i: r.update(loss=5.0 + i, contrastive_loss=5.0), "loss 7.0000 > 2 x its lowest"),
        (health.DIVERGENCE, lambda r, i: r.update(loss=None, skipped_nonfinite=1), "loss None, 1 non-finite"),
    ],
)
def test_each_condition_fires_after_its_window_with_evidence_and_advice(condition, change, evidence):
    records = spoiled(change)
    monitor = health.HealthMonitor(num_groups=2, window=WINDOW)
    findings = [monitor.observe(r) for r in records]
    fired = [i for i, f in enumerate(findings) if any(x.name == condition for x in f)]
    assert fired == list(range(20 + WINDOW - 1, 40))  # from the window's last record, while it holds
    first = next(x for x in findings[20 + WINDOW - 1] if x.name == condition)
    assert first.started and evidence in first.evidence
    later = next(x for x in findings[-1] if x.name == condition)
    assert not later.started  # one line per onset
    line = first.line(records[22]["step"])
    assert line.startswith(f"health: {condition} at step 230: ") and health.ADVICE[condition] in line
    assert monitor.summary().startswith(f"{condition} (steps 230-400, 18 records)")


def test_a_condition_must_hold_for_the_whole_window():
    # Collapse on two records out of every three never fires; a third in a row does.
    records = healthy_stream()
    for i in range(10, 19):
        if i % 3:
            records[i]["code_perplexity"] = 3.0
    assert run(records)[1] == [[]] * 40
    records[12]["code_perplexity"] = 3.0
    assert run(records)[1][13] == [health.CODEBOOK_COLLAPSE]


def test_all_blank_ctc_fires_after_the_warmup_and_freeze_only():
    records = [{"step": 10 * i, "loss": 50.0 - i, "blank_fraction": 0.995, "skipped_nonfinite": 0} for i in range(1, 9)]
    _, names = run(records, all_blank_after=40)
    # Records at steps 40, 50, 60 are the first window after the warmup (step >= 40).
    assert names == [[]] * 5 + [[health.CTC_ALL_BLANK]] * 3
    records[-1]["blank_fraction"] = 0.6
    assert run(records, all_blank_after=40)[1][-1] == []


def test_no_codebook_no_collapse_and_missing_metrics_are_no_evidence():
    records = [{"step": i, "loss": 1.0, "code_perplexity": 1.0, "skipped_nonfinite": 0} for i in range(1, 6)]
    assert run(records)[1][-1] == [health.CODEBOOK_COLLAPSE]
    monitor = health.HealthMonitor(num_groups=None, window=WINDOW)
    assert [monitor.observe(r) for r in records] == [[]] * 5
    with pytest.raises(ValueError, match="health_window must be >= 1"):
        health.HealthMonitor(num_groups=2, window=0)


def test_replaying_a_prefix_reports_what_the_uninterrupted_stream_reports():
    records = spoiled(lambda r, i: r.update(grad_norm=1e-4), at=15)
    _, expected = run(records)
    for cut in (10, 16, 17, 25):
        monitor = health.HealthMonitor(num_groups=2, window=WINDOW)
        monitor.replay(records[:cut])
        assert [[f.name for f in monitor.observe(r)] for r in records[cut:]] == expected[cut:]


def test_the_loss_curve_marks_unhealthy_steps(tmp_path):
    records = healthy_stream(20)
    clean, marked = tmp_path / "clean.png", tmp_path / "marked.png"
    metrics.plot_loss_curve(records, clean)
    for r in records[10:]:
        r["health"] = [health.CODEBOOK_COLLAPSE]
    metrics.plot_loss_curve(records, marked)
    a, b = imread(clean), imread(marked)
    redder = (b[..., 0] - b[..., 1]) - (a[..., 0] - a[..., 1])
    assert a.shape == b.shape and np.count_nonzero(redder > 0.05) > 1000
