"""Validation inside the training loop.

The trainer takes a task's `Evaluator`: a callable `evaluate(state, step) -> {name: float}` it calls
every `train.eval_every` updates (a multiple of `train.log_every`); the values go into that step's
`metrics.jsonl` record as `valid_<name>` keys (TensorBoard: `valid/<name>`). Each task brings its
own (`pretraining.evaluator.PretrainingEvaluator`: the contrastive task on held-out audio;
`asr.evaluator.CTCEvaluator`: WER / CER); nothing else changes.
"""

from __future__ import annotations

from typing import Any, Protocol

VALID_PREFIX = "valid_"


class Evaluator(Protocol):
    """`evaluate(state, step) -> {name: value}`; the trainer logs each value as `valid_<name>`.

    `state` is the run's `train_step.TrainState`, typed `Any` so that an evaluator needs nothing of
    the training room (`asr.evaluator` also serves `w2v-evaluate`)."""

    def __call__(self, state: Any, step: int) -> dict[str, float]: ...


def prefixed(metrics: dict[str, float]) -> dict[str, float]:
    """An evaluator's values under the `valid_` prefix the metrics record uses."""
    return {f"{VALID_PREFIX}{name}": value for name, value in metrics.items()}
