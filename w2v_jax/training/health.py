"""A run that names its own failures: detectors over the logged records of a training run.

wav2vec 2.0 runs fail quietly in a few known ways (fairseq issues 3735, 4948, 4530, 3661;
transformers 14387, 19588; the all-blank CTC plateau of fairseq 3340). A `Detector` reads the
metrics a record already holds and says whether its condition holds on that record; the monitor
reports a condition once it has held on `window` consecutive logged records (one bad window is
noise, a run of them is a state), then on every record while it holds.
`HealthMonitor.observe(record)` returns the conditions that hold at that record, with the evidence
(the numbers) and what to change; the loop logs a line when a condition starts to hold, puts the
names in the record's `health` field and the summary, and marks them on the loss curve.

The task says which detectors watch its run (`trainer.Task.detectors`). The ones every task's
records can show are here:

- `GradNormCollapse`: the gradient norm below `ratio` x the largest logged so far (the model
  stopped learning).
- `Divergence`: a non-finite loss or skipped updates in the window's records, or a loss above
  `ratio` x the lowest logged so far.

A task's own live in its room: pretraining's codebook collapse and trivial solution
(`pretraining.task`), fine-tuning's all-blank CTC plateau (`asr.task`).

The monitor is a pure function of the record stream, so a resumed run replays the records it kept
(`replay`) and reports exactly what an uninterrupted run reports.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

logger = logging.getLogger(__name__)

MODES = ("warn", "stop", "off")
RECORD_FIELD = "health"  # the record's list of condition names (present only when non-empty)


class Detector(Protocol):
    """One failure condition over a run's logged records.

    A detector watches one run: it may keep running figures of the records it has seen (a peak, a
    minimum), so every run gets new ones (`trainer.Task.detectors`).

    Attributes:
      name: the condition's name, as the record's `health` field lists it.
      advice: what to change, the settings known to fix it.
    """

    # Read-only (properties): detectors hold them as class constants.
    @property
    def name(self) -> str: ...

    @property
    def advice(self) -> str: ...

    def check(self, record: Mapping[str, Any]) -> str | None:
        """The evidence (the numbers) when the condition holds on `record` alone, else None.

        `record` is a logged record with its `step`; a metric it lacks is no evidence."""
        ...


@dataclasses.dataclass(frozen=True)
class Finding:
    """A condition that holds at a record: its name, the evidence and what to change."""

    name: str
    evidence: str
    started: bool  # True on the first record it is reported (the loop logs a line then)
    advice: str

    def line(self, step: int) -> str:
        return f"health: {self.name} at step {step}: {self.evidence}; {self.advice}"


def record_value(record: Mapping[str, Any], name: str) -> float | None:
    """`record[name]` as a float, or None when the record lacks it (or holds null)."""
    value = record.get(name)
    return None if value is None else float(value)


@dataclasses.dataclass
class GradNormCollapse:
    """The gradient norm below `ratio` x the largest logged so far."""

    ratio: float = 0.01
    name: ClassVar[str] = "grad_norm_collapse"
    advice: ClassVar[str] = (
        "the model stopped learning: lower train.learning_rate or train.weight_decay, lengthen "
        "train.warmup_steps, check model.feature_grad_mult and a collapsed codebook"
    )
    _peak: float = dataclasses.field(default=0.0, init=False, repr=False)

    def check(self, record: Mapping[str, Any]) -> str | None:
        grad_norm = record_value(record, "grad_norm")
        if grad_norm is None or not math.isfinite(grad_norm):
            return None
        self._peak = max(self._peak, grad_norm)
        if grad_norm < self.ratio * self._peak:
            return f"grad norm {grad_norm:.3g} < {self.ratio:g} x its peak {self._peak:.3g}"
        return None


@dataclasses.dataclass
class Divergence:
    """A non-finite loss or skipped updates, or a loss above `ratio` x the lowest logged so far."""

    ratio: float = 2.0
    name: ClassVar[str] = "divergence"
    advice: ClassVar[str] = (
        "lower train.learning_rate, lengthen train.warmup_steps, lower train.max_grad_norm, use float32 "
        "(train.precision) or check the data"
    )
    _lowest: float = dataclasses.field(default=math.inf, init=False, repr=False)

    def check(self, record: Mapping[str, Any]) -> str | None:
        loss = record_value(record, "loss")
        skipped = int(record.get("skipped_nonfinite") or 0)
        if loss is None or not math.isfinite(loss) or skipped:
            return f"loss {loss}, {skipped} non-finite updates skipped"
        evidence = None
        if loss > self.ratio * self._lowest:
            evidence = f"loss {loss:.4f} > {self.ratio:g} x its lowest {self._lowest:.4f}"
        self._lowest = min(self._lowest, loss)
        return evidence


class HealthMonitor:
    """Watches the stream of logged records (module docstring).

    Args:
      detectors: the conditions watched (new objects: they keep figures of the records they see),
        reported in this order.
      window: consecutive logged records a condition must hold before it is reported.
    """

    def __init__(self, detectors: Sequence[Detector], *, window: int = 3):
        if window < 1:
            raise ValueError(f"train.health_window must be >= 1 logged record, got {window}")
        names = [detector.name for detector in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"each condition is watched by one detector, got {names}")
        self.detectors = list(detectors)
        self.window = window
        self._held = dict.fromkeys(names, 0)  # consecutive records each condition held
        self.history: dict[str, list[int]] = {name: [] for name in names}  # steps reported, per name

    def observe(self, record: Mapping[str, Any]) -> list[Finding]:
        """The conditions that have held for `window` records up to and including `record`
        (which needs a `step`)."""
        # Every detector sees every record (their running figures), before any is reported.
        found = {detector.name: detector.check(record) for detector in self.detectors}
        findings = []
        for detector in self.detectors:
            name, evidence = detector.name, found[detector.name]
            self._held[name] = self._held[name] + 1 if evidence is not None else 0
            if evidence is not None and self._held[name] >= self.window:
                findings.append(Finding(name, evidence, self._held[name] == self.window, detector.advice))
                self.history[name].append(int(record["step"]))
        return findings

    def replay(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Observes the records a resumed run kept, silently (their lines were logged before)."""
        for record in records:
            self.observe(record)

    def summary(self) -> str:
        """One line for the end-of-run summary: each condition reported, its first and last step."""
        parts = [
            f"{name} (steps {steps[0]}-{steps[-1]}, {len(steps)} records)"
            for name, steps in self.history.items()
            if steps
        ]
        return ", ".join(parts) or "no failure detected"
