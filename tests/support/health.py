"""Synthetic logged-record streams for the failure detectors' tests (w2v_jax.training.health and the
detectors of the task rooms), the check that a condition fires after its window, and a detector of a
task the library does not have (`LossAbove`)."""

import dataclasses
from typing import ClassVar

import numpy as np

from w2v_jax.training import health

WINDOW = 3

# (condition, change applied to the records from the 20th on, evidence) of the loop's own detectors.
GENERIC_CASES = [
    (health.GradNormCollapse.name, lambda r, i: r.update(grad_norm=1e-3), "grad norm 0.001 < 0.01 x its median"),
    (
        health.Divergence.name,
        lambda r, i: r.update(loss=5.0 + i, contrastive_loss=5.0),
        "loss 7.0000 > 2 x its lowest median over 5 records",
    ),
    (health.Divergence.name, lambda r, i: r.update(loss=None, skipped_nonfinite=1), "loss None, 1 non-finite"),
]


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


def spoiled(change, at=20):
    """The healthy stream with `change(record, i)` applied from record `at` on."""
    records = healthy_stream()
    for i, record in enumerate(records[at:]):
        change(record, i)
    return records


def observe(detectors, records):
    """(monitor, the condition names reported at each record) of a monitor of `detectors`."""
    monitor = health.HealthMonitor(detectors, window=WINDOW)
    return monitor, [[f.name for f in monitor.observe(r)] for r in records]


def check_fires_after_its_window(detectors, condition, change, evidence):
    """The healthy stream spoiled from record 20 on (`change`) makes `condition` fire from the
    window's last record on, with `evidence` and the detector's advice, one line per onset; no
    detector listed before it fires (the summary starts with it)."""
    (advice,) = [d.advice for d in detectors if d.name == condition]
    records = spoiled(change)
    monitor = health.HealthMonitor(detectors, window=WINDOW)
    findings = [monitor.observe(r) for r in records]
    fired = [i for i, f in enumerate(findings) if any(x.name == condition for x in f)]
    assert fired == list(range(20 + WINDOW - 1, 40))  # from the window's last record, while it holds
    first = next(x for x in findings[20 + WINDOW - 1] if x.name == condition)
    assert first.started and evidence in first.evidence
    later = next(x for x in findings[-1] if x.name == condition)
    assert not later.started  # one line per onset
    line = first.line(records[22]["step"])
    assert line.startswith(f"health: {condition} at step 230: ") and advice in line
    assert monitor.summary().startswith(f"{condition} (steps 230-400, 18 records)")


@dataclasses.dataclass
class LossAbove:
    """A detector a task of the tests' own could bring: the loss above `limit`."""

    limit: float
    name: ClassVar[str] = "loss_above"
    advice: ClassVar[str] = "lower the loss"

    def check(self, record):
        loss = health.record_value(record, "loss")
        return None if loss is None or loss <= self.limit else f"loss {loss:.2f} > {self.limit:g}"
