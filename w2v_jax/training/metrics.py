"""Training-run outputs: `metrics.jsonl`, TensorBoard events beside it, the loss-curve PNG.

`metrics.jsonl` is the record other tools read: one JSON object per logged step, appended and
flushed as it is written, so a killed run leaves every line it logged. When a run resumes from
a checkpoint, the lines past the checkpoint's step are dropped first (`truncate_after`), so the
file of a resumed run reads as one uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from matplotlib.figure import Figure

from w2v_jax.json_files import JSONFileError, loads

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
# Record fields measured against the clock: a resumed run's records equal an uninterrupted one's but for these.
# What a curve can be drawn against: the record field and its axis label.
X_AXES = {"step": "step", "audio_hours_seen": "hours of audio seen", "flops_seen": "model FLOPs done"}
RATE_FIELDS = frozenset({"audio_seconds_per_second", "steps_per_second", "flops_per_second", "mfu"})


def _summary_writer_class() -> type:
    """tensorboardX's `SummaryWriter`, imported without torch: when torch is installed, tensorboardX
    imports it (a second or two of every launcher's start-up) only to accept torch tensors, and the
    writer here is given Python floats and text. A process that has imported torch already keeps it."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - a 1 s import, for the writing process only

        return SummaryWriter
    # None makes `import torch` raise ImportError (the import system's documented block).
    sys.modules["torch"] = None  # type: ignore[assignment]  # typeshed types sys.modules' values as modules only
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - as above
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _jsonable(value: Any) -> Any:
    """Python scalars for JSON; non-finite floats become null (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


UNREADABLE_SUFFIX = ".unreadable"  # beside the metrics file: lines a resume could not keep as records


class MetricRecords(list):
    """The records of a metrics file in order (a list of dicts), and `unreadable`: the 1-based
    numbers of its lines that are no JSON record (a kill mid-write tears the last line)."""

    def __init__(self, records: Iterable[dict[str, Any]], unreadable: Sequence[int]):
        super().__init__(records)
        self.unreadable = list(unreadable)


def _parse(path: str | os.PathLike) -> tuple[MetricRecords, list[str]]:
    """(the records of `path`, its unreadable lines as written)."""
    records, numbers, raw = [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = loads(line, path, line=number, expect=dict)
            except JSONFileError:
                record = None
            if record is not None and "step" in record:
                records.append(record)
            else:
                numbers.append(number)
                raw.append(line if line.endswith("\n") else line + "\n")
    return MetricRecords(records, numbers), raw


def read_metrics(path: str | os.PathLike) -> MetricRecords:
    """The records of a `metrics.jsonl` file; lines that are no record are left out, counted in the
    result's `unreadable` and named in one warning."""
    records, _ = _parse(path)
    if records.unreadable:
        shown = ", ".join(map(str, records.unreadable[:10])) + (", ..." if len(records.unreadable) > 10 else "")
        logger.warning(
            "%s: %d unreadable line(s) left out (line %s; a kill mid-write tears the last line)",
            path,
            len(records.unreadable),
            shown,
        )
    return records


def truncate_after(path: str | os.PathLike, step: int) -> None:
    """Drops the records of `path` with `step` greater than `step` (the resumed-from checkpoint).
    Unreadable lines are moved, as written, to the file beside it named with `UNREADABLE_SUFFIX`."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    records, raw = _parse(path)
    if raw:
        aside = path.with_name(path.name + UNREADABLE_SUFFIX)
        with open(aside, "a", encoding="utf-8") as f:
            f.writelines(raw)
        logger.warning("%s: %d unreadable line(s) moved to %s", path, len(raw), aside)
    kept = [r for r in records if r["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)  # atomic: a kill here leaves the old or the new file, never a mix


def tensorboard_tag(name: str) -> str:
    """The TensorBoard tag of a record key: `valid_loss` -> `valid/loss`, `data_skipped_empty` ->
    `data/skipped_empty`, anything else under `train/` (TensorBoard groups tags by their prefix)."""
    for group in ("valid", "data"):
        if name.startswith(group + "_"):
            return f"{group}/{name[len(group) + 1 :]}"
    return f"train/{name}"


class MetricWriter:
    """Appends metrics to `workdir/metrics.jsonl` and TensorBoard events in `workdir`.

    Only the primary process writes (`enabled=False` elsewhere), so a multi-host run has one
    record. TensorBoard is written with tensorboardX (no TensorFlow dependency); scalars are grouped
    by `tensorboard_tag`, and `config` (the run's resolved config as JSON text) is recorded as the
    `config` text entry.
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True, config: str | None = None):
        self.path = pathlib.Path(workdir) / METRICS_FILE
        self.enabled = enabled
        self._file: TextIO | None = None
        self._tb: Any = None  # tensorboardX's SummaryWriter (untyped)
        if enabled:
            self._file = open(self.path, "a", encoding="utf-8")
            self._tb = _summary_writer_class()(str(workdir))
            if config is not None:
                # Markdown code block: TensorBoard's text tab keeps the JSON's indentation.
                self._tb.add_text("config", "```\n" + config + "\n```", 0)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends one record `{"step": step, **metrics}` and the scalars to TensorBoard."""
        if self._file is None:  # not enabled
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self._tb.add_scalar(tensorboard_tag(name), value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tb.close()


@dataclasses.dataclass(frozen=True)
class MetricRoles:
    """What a task's per-step metrics are to the loop: how a logging window reduces them into the
    logged record, and which the progress bar shows. A metric named nowhere is averaged over the
    window's finite steps (`mean_metrics`).

    Attributes:
      summed: names added up over a logging window instead of averaged (counts).
      ratios: `{name: (numerator, denominator)}`, divided once over a window: sum / sum (`mean_metrics`).
      last: states rather than per-step values (running counters): the record keeps the window's last.
      progress: `{record name: label}` shown on the progress bar at every logged record (a `valid_*`
        name where the record has validation values).
      valid_progress: `{validation value: label}` shown on the progress bar from the last validation.
    """

    summed: tuple[str, ...] = ()
    ratios: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    last: tuple[str, ...] = ()
    progress: Mapping[str, str] = dataclasses.field(default_factory=dict)
    valid_progress: Mapping[str, str] = dataclasses.field(default_factory=dict)


def mean_metrics(
    window: Sequence[Mapping[str, float]],
    summed: Iterable[str] = (),
    ratios: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, float]:
    """Averages a window of per-step metrics; skipped (non-finite) steps are left out of averages.

    Args:
      window: per-step host metrics, each with a "skipped_nonfinite" entry (0 or 1).
      summed: names added up over the window instead of averaged (counts).
      ratios: `{name: (numerator, denominator)}`, names computed as sum(numerator) / sum(denominator)
        over the finite steps instead of averaged (accuracy from correct and masked frames: a step
        with more masked frames weighs more). A step recorded before its numerator existed (a
        window restored from an older checkpoint) contributes `name * denominator`; one recorded
        before the ratio itself existed (chance_accuracy) is left out of it.

    Returns:
      one dict: the mean of each metric over the finite steps (NaN if there were none), the sum of
      each `summed` name, each ratio (NaN if its denominator sums to 0).
    """
    summed = set(summed)
    ratios = dict(ratios or {})
    good = [m for m in window if not m["skipped_nonfinite"]]
    out: dict[str, float] = {}
    for name in window[0]:
        if name in summed:
            out[name] = sum(m[name] for m in window)
        else:
            out[name] = sum(m[name] for m in good) / len(good) if good else float("nan")
    for name, (numerator, denominator) in ratios.items():
        counted = [m for m in good if numerator in m or name in m]
        top = sum(m[numerator] if numerator in m else m[name] * m[denominator] for m in counted)
        bottom = sum(m[denominator] for m in counted)
        out[name] = top / bottom if bottom else float("nan")
    return out


def format_values(values: Mapping[str, Any], spec: Sequence[tuple[str, str, str]]) -> str:
    """`label value, label value, ...` for each `(name, label, format)` of `spec`; a missing or None
    value reads `n/a` (e.g. "loss 2.3457, accuracy 0.400, code perplexity n/a")."""
    parts = []
    for name, label, number_format in spec:
        value = values.get(name)
        parts.append(f"{label} {'n/a' if value is None else format(value, number_format)}")
    return ", ".join(parts)


def check_x_axis(x: str) -> None:
    """A ValueError naming the choices unless `x` is one of `X_AXES`."""
    if x not in X_AXES:
        raise ValueError(f"curves are drawn against one of {sorted(X_AXES)}, not {x!r}")


def plot_loss_curve(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    panels: Sequence[tuple[str, str]],
    x: str = "step",
) -> None:
    """Writes a PNG with one panel per `(metric, title)` against `x` (`X_AXES`: the step, the hours of
    audio seen or the model FLOPs done; records without it are left out) (a task's `plot`, e.g.
    pretraining's loss, contrastive accuracy and code perplexity): the training values, the validation
    values (`valid_*` keys) and the chance level (`chance_*`, dotted: the accuracy's) where the records have them.
    Steps whose record names failure conditions (`health`) are shaded red in every panel, and the
    first panel names each condition where it starts."""
    check_x_axis(x)
    records = [r for r in records if r.get(x) is not None]
    fig = Figure(figsize=(4.5 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    unhealthy = [(r[x], r["health"]) for r in records if r.get("health")]
    for index, (ax, (name, title)) in enumerate(zip(axes, panels)):
        started = set()
        for step, names in unhealthy:
            ax.axvline(step, color="red", alpha=0.15, linewidth=3)
            new = [n for n in names if n not in started]
            if index == 0 and new:
                ax.annotate(
                    ", ".join(new),
                    (step, 1.0),
                    xycoords=("data", "axes fraction"),
                    color="red",
                    fontsize=7,
                    rotation=90,
                    va="top",
                    ha="right",
                )
            started.update(names)
        for key, label in ((name, "train"), (f"valid_{name}", "valid"), (f"chance_{name}", "chance")):
            points = [(r[x], r[key]) for r in records if r.get(key) is not None]
            if points:
                steps, values = zip(*points)
                if label == "chance":
                    ax.plot(steps, values, linestyle=":", color="gray", label=label)
                else:
                    ax.plot(steps, values, marker="." if len(points) < 50 else None, label=label)
        if any(r.get(f"valid_{name}") is not None or r.get(f"chance_{name}") is not None for r in records):
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel(X_AXES[x])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
