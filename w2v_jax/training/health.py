"""A run that names its own failures: detectors over the logged records of a training run.

wav2vec 2.0 runs fail quietly in a few known ways (fairseq issues 3735, 4948, 4530, 3661;
transformers 14387, 19588; the all-blank CTC plateau of fairseq 3340). Each detector reads the
metrics a record already holds; a condition is reported once it has held on `window` consecutive
logged records (one bad window is noise, a run of them is a state), then on every record while it
holds. `HealthMonitor.observe(record)` returns the conditions that hold at that record, with the
evidence (the numbers) and what to change; the loop logs a line when a condition starts to hold,
puts the names in the record's `health` field and the summary, and marks them on the loss curve.

The detectors (`Thresholds` holds their numbers):

- `codebook_collapse`: code perplexity at most `collapse_perplexity_per_group` x the number of
  groups (its floor is the number of groups: one codeword per group).
- `trivial_solution`: contrastive loss per masked frame <= `trivial_loss` with accuracy >=
  `trivial_accuracy` (positives told from distractors for free: identical codewords, or masks that
  leak the target).
- `grad_norm_collapse`: the gradient norm below `grad_norm_collapse_ratio` x the largest logged so
  far (the model stopped learning).
- `divergence`: a non-finite loss or skipped updates in the window's records, or a loss above
  `divergence_ratio` x the lowest logged so far.
- `ctc_all_blank`: (CTC fine-tuning) the blank is the argmax of at least `all_blank_fraction` of the
  frames, from update `all_blank_after` on (the end of the warmup and of the frozen-encoder updates:
  CTC emits blanks first, then characters).

The monitor is a pure function of the record stream, so a resumed run replays the records it kept
(`replay`) and reports exactly what an uninterrupted run reports.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

MODES = ("warn", "stop", "off")
RECORD_FIELD = "health"  # the record's list of condition names (present only when non-empty)

CODEBOOK_COLLAPSE = "codebook_collapse"
TRIVIAL_SOLUTION = "trivial_solution"
GRAD_NORM_COLLAPSE = "grad_norm_collapse"
DIVERGENCE = "divergence"
CTC_ALL_BLANK = "ctc_all_blank"
CONDITIONS = (CODEBOOK_COLLAPSE, TRIVIAL_SOLUTION, GRAD_NORM_COLLAPSE, DIVERGENCE, CTC_ALL_BLANK)

# What to change, per condition: the settings known to fix it.
ADVICE = {
    CODEBOOK_COLLAPSE: (
        "raise model.diversity_loss_weight (BASE 0.1), keep the Gumbel temperature high for longer "
        "(train.max_gumbel_temperature, a slower train.gumbel_temperature_decay) or lower train.learning_rate"
    ),
    TRIVIAL_SOLUTION: (
        "the positives are found for free: check masking (model.mask_time_prob 0.65, mask_time_length 10), "
        "model.num_negatives and a collapsed codebook (model.diversity_loss_weight)"
    ),
    GRAD_NORM_COLLAPSE: (
        "the model stopped learning: lower train.learning_rate or train.weight_decay, lengthen "
        "train.warmup_steps, check model.feature_grad_mult and a collapsed codebook"
    ),
    DIVERGENCE: (
        "lower train.learning_rate, lengthen train.warmup_steps, lower train.max_grad_norm, use float32 "
        "(train.precision) or check the data"
    ),
    CTC_ALL_BLANK: (
        "the all-blank CTC plateau: train for more updates or raise train.learning_rate for the new head; "
        "check the labels and the vocabulary's blank"
    ),
}


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The numbers the detectors compare with (module docstring)."""

    collapse_perplexity_per_group: float = 2.0
    trivial_loss: float = 0.05
    trivial_accuracy: float = 0.99
    grad_norm_collapse_ratio: float = 0.01
    divergence_ratio: float = 2.0
    all_blank_fraction: float = 0.98


@dataclasses.dataclass(frozen=True)
class Finding:
    """A condition that holds at a record: its name, the evidence and what to change."""

    name: str
    evidence: str
    started: bool  # True on the first record it is reported (the loop logs a line then)

    def line(self, step: int) -> str:
        return f"health: {self.name} at step {step}: {self.evidence}; {ADVICE[self.name]}"


def _value(record: Mapping[str, Any], name: str) -> float | None:
    value = record.get(name)
    return None if value is None else float(value)


class HealthMonitor:
    """Watches the stream of logged records (module docstring).

    Args:
      num_groups: the quantizer's codebook groups (None: no codebook, no collapse check).
      all_blank_after: the update from which the all-blank check runs.
      window: consecutive logged records a condition must hold before it is reported.
      thresholds: the detectors' numbers.
    """

    def __init__(
        self,
        *,
        num_groups: int | None,
        all_blank_after: int = 0,
        window: int = 3,
        thresholds: Thresholds = Thresholds(),
    ):
        if window < 1:
            raise ValueError(f"train.health_window must be >= 1 logged record, got {window}")
        self.num_groups = num_groups
        self.all_blank_after = all_blank_after
        self.window = window
        self.thresholds = thresholds
        self._held = dict.fromkeys(CONDITIONS, 0)  # consecutive records each condition held
        self._lowest_loss = math.inf
        self._peak_grad_norm = 0.0
        self.history: dict[str, list[int]] = {name: [] for name in CONDITIONS}  # steps reported, per name

    def _check(self, record: Mapping[str, Any]) -> dict[str, str]:
        """The conditions that hold on this record alone: name -> evidence."""
        t, found = self.thresholds, {}
        step = int(record["step"])
        loss, perplexity = _value(record, "loss"), _value(record, "code_perplexity")
        if self.num_groups and perplexity is not None:
            if perplexity <= t.collapse_perplexity_per_group * self.num_groups:
                limit = f"{t.collapse_perplexity_per_group:g} x {self.num_groups} groups"
                found[CODEBOOK_COLLAPSE] = f"code perplexity {perplexity:.2f} <= {limit}"
        contrastive, accuracy = _value(record, "contrastive_loss"), _value(record, "accuracy")
        if contrastive is not None and accuracy is not None:
            if contrastive <= t.trivial_loss and accuracy >= t.trivial_accuracy:
                found[TRIVIAL_SOLUTION] = f"contrastive loss {contrastive:.4f}, accuracy {accuracy:.3f}"
        grad_norm = _value(record, "grad_norm")
        if grad_norm is not None and math.isfinite(grad_norm):
            self._peak_grad_norm = max(self._peak_grad_norm, grad_norm)
            if grad_norm < t.grad_norm_collapse_ratio * self._peak_grad_norm:
                found[GRAD_NORM_COLLAPSE] = (
                    f"grad norm {grad_norm:.3g} < {t.grad_norm_collapse_ratio:g} x its peak {self._peak_grad_norm:.3g}"
                )
        skipped = int(record.get("skipped_nonfinite") or 0)
        if loss is None or not math.isfinite(loss) or skipped:
            found[DIVERGENCE] = f"loss {loss}, {skipped} non-finite updates skipped"
        else:
            if loss > t.divergence_ratio * self._lowest_loss:
                found[DIVERGENCE] = f"loss {loss:.4f} > {t.divergence_ratio:g} x its lowest {self._lowest_loss:.4f}"
            self._lowest_loss = min(self._lowest_loss, loss)
        blank = _value(record, "blank_fraction")
        if blank is not None and step >= self.all_blank_after and blank >= t.all_blank_fraction:
            found[CTC_ALL_BLANK] = f"blank is the argmax of {blank:.1%} of the frames"
        return found

    def observe(self, record: Mapping[str, Any]) -> list[Finding]:
        """The conditions that have held for `window` records up to and including `record`
        (which needs a `step`)."""
        found = self._check(record)
        findings = []
        for name in CONDITIONS:
            self._held[name] = self._held[name] + 1 if name in found else 0
            if self._held[name] >= self.window:
                findings.append(Finding(name, found[name], started=self._held[name] == self.window))
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
