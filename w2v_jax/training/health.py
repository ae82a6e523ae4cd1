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

- `GradNormCollapse`: the gradient norm below `ratio` x its median over the `recent` records before
  (the model stopped learning).
- `Divergence`: a non-finite loss or skipped updates in the window's records, or a loss above
  `ratio` x the lowest median of `recent` consecutive records so far.

Both compare with medians of recent records, not with single extremes: one clipped spike of the
gradient norm, or one record of a bucket of short utterances, moves no median, and a gradient norm
that falls slowly through the warmup is followed by its recent median. The loss they watch is a
per-position one (pretraining's loss per masked frame, CTC's loss per label: `loop_detectors`), so
a bucket of longer utterances does not read as a higher loss.

A task's own live in its room: pretraining's codebook collapse and trivial solution
(`pretraining.task`), fine-tuning's all-blank CTC plateau (`asr.task`).

The monitor is a pure function of the record stream, so a resumed run replays the records it kept
(`replay`) and reports exactly what an uninterrupted run reports.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import ml_collections

logger = logging.getLogger(__name__)

MODES = ("warn", "stop", "off")
RECORD_FIELD = "health"  # the record's list of condition names (present only when non-empty)
RECENT = 5  # default `train.health_recent`: logged records a detector's running median covers


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
    """The gradient norm below `ratio` x its median over the `recent` logged records before it.

    Records where the condition held stay out of that median, so a collapse holds until the norm
    recovers; nothing is compared before `recent` records have been seen."""

    ratio: float = 0.01
    recent: int = RECENT
    name: ClassVar[str] = "grad_norm_collapse"
    advice: ClassVar[str] = (
        "the model stopped learning: lower train.learning_rate or train.weight_decay, lengthen "
        "train.warmup_steps, check model.feature_grad_mult and a collapsed codebook"
    )
    _norms: deque[float] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_recent(self.recent)
        self._norms = deque(maxlen=self.recent)

    def check(self, record: Mapping[str, Any]) -> str | None:
        grad_norm = record_value(record, "grad_norm")
        if grad_norm is None or not math.isfinite(grad_norm):
            return None
        if len(self._norms) == self.recent:
            median = statistics.median(self._norms)
            if grad_norm < self.ratio * median:
                return (
                    f"grad norm {grad_norm:.3g} < {self.ratio:g} x its median {median:.3g} over the "
                    f"{self.recent} records before"
                )
        self._norms.append(grad_norm)
        return None


@dataclasses.dataclass
class Divergence:
    """A non-finite loss or skipped updates, or the loss above `ratio` x the lowest median of
    `recent` consecutive logged records so far.

    `loss` names the record's metric watched: a per-position loss (per masked frame, per label)."""

    ratio: float = 2.0
    recent: int = RECENT
    loss: str = "loss"
    name: ClassVar[str] = "divergence"
    advice: ClassVar[str] = (
        "lower train.learning_rate, lengthen train.warmup_steps, lower train.max_grad_norm, use float32 "
        "(train.precision) or check the data"
    )
    _losses: deque[float] = dataclasses.field(init=False, repr=False)
    _lowest: float = dataclasses.field(default=math.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_recent(self.recent)
        self._losses = deque(maxlen=self.recent)

    def check(self, record: Mapping[str, Any]) -> str | None:
        skipped = int(record.get("skipped_nonfinite") or 0)
        if self.loss not in record and not skipped:
            return None  # a record without the metric is no evidence (a non-finite one is logged as null)
        loss = record_value(record, self.loss)
        if loss is None or not math.isfinite(loss) or skipped:
            return f"{self.loss} {loss}, {skipped} non-finite updates skipped"
        evidence = None
        if loss > self.ratio * self._lowest:
            evidence = (
                f"{self.loss} {loss:.4f} > {self.ratio:g} x its lowest median over {self.recent} records "
                f"{self._lowest:.4f}"
            )
        self._losses.append(loss)
        if len(self._losses) == self.recent:
            self._lowest = min(self._lowest, statistics.median(self._losses))
        return evidence


def _check_recent(recent: int) -> None:
    if recent < 1:
        raise ValueError(f"train.health_recent must be >= 1 logged record, got {recent}")


def loop_detectors(config: ml_collections.ConfigDict, *, loss: str) -> list[Detector]:
    """The detectors every task's records can show, under the config's `train.health_recent`:
    `GradNormCollapse` and `Divergence` of the task's per-position loss metric `loss`."""
    recent = config.train.get("health_recent", RECENT)
    return [GradNormCollapse(recent=recent), Divergence(recent=recent, loss=loss)]


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
