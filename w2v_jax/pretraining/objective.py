"""wav2vec 2.0 pretraining as the train step's objective, and the totals of its terms.

`PretrainingObjective`: what the train step optimises: the contrastive + diversity (+ feature
penalty) loss summed over masked frames, the gradient divided once by their count (fairseq's sample
size), the Gumbel temperature a function of the step.
`pretraining_sums` and `PretrainingTotals` (a batch's summed terms, and their totals over a set
divided once) are shared by the objective, the validation inside training (`evaluator`) and
`research.validation`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from w2v_jax.model import Wav2Vec2PreTrainingOutput
from w2v_jax.quantization import gumbel_temperature

# The sums the pretraining objective adds up over batches (float32), and the counts (int32).
PRETRAINING_SUMS = (
    "loss",
    "contrastive_loss",
    "diversity_loss",
    "feature_penalty",
    "code_perplexity",
    "chance_correct",
)
PRETRAINING_COUNTS = ("num_correct", "num_masked")


def pretraining_sums(out: Wav2Vec2PreTrainingOutput) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """One batch's pretraining terms: float32 sums over its masked frames (`code_perplexity`: the
    batch's perplexity) and int32 counts, by the names of `PRETRAINING_SUMS` and `PRETRAINING_COUNTS`."""
    sums = {
        name: getattr(out, "codevector_perplexity" if name == "code_perplexity" else name) for name in PRETRAINING_SUMS
    }
    return (
        {name: jnp.asarray(value, jnp.float32) for name, value in sums.items()},
        {name: jnp.asarray(getattr(out, name), jnp.int32) for name in PRETRAINING_COUNTS},
    )


class PretrainingTotals:
    """`pretraining_sums` of several batches added up on the host (float64), divided once.

    `metrics()`: `loss`, `contrastive_loss`, `diversity_loss`, `feature_penalty` per masked frame;
    `accuracy` over every masked frame and its real chance level `chance_accuracy`;
    `code_perplexity`, the mean over the batches added of each batch's perplexity over its masked
    frames (the training metric's meaning); `num_masked`.
    """

    def __init__(self) -> None:
        self.totals = dict.fromkeys(PRETRAINING_SUMS + PRETRAINING_COUNTS, 0.0)
        self.num_batches = 0

    def add(self, values: Mapping[str, Any]) -> None:
        """Adds one batch's sums and counts (host scalars, by name)."""
        for name in self.totals:
            self.totals[name] += float(values[name])
        self.num_batches += 1

    def metrics(self) -> dict[str, float]:
        totals = self.totals
        masked = max(totals["num_masked"], 1.0)
        values = {
            name: totals[name] / masked for name in ("loss", "contrastive_loss", "diversity_loss", "feature_penalty")
        }
        values["accuracy"] = totals["num_correct"] / masked
        values["chance_accuracy"] = totals["chance_correct"] / masked
        values["code_perplexity"] = totals["code_perplexity"] / self.num_batches if self.num_batches else math.nan
        values["num_masked"] = int(totals["num_masked"])
        return values


@dataclasses.dataclass(frozen=True)
class PretrainingObjective:
    """wav2vec 2.0 pretraining as a `train_step.Objective`: losses summed over masked frames,
    normalised by their count.

    Attributes:
      gumbel_start, gumbel_end, gumbel_decay: the Gumbel temperature schedule (`gumbel_temperature`).
    """

    gumbel_start: float = 2.0
    gumbel_end: float = 0.5
    gumbel_decay: float = 0.999995
    sums: tuple[str, ...] = PRETRAINING_SUMS
    counts: tuple[str, ...] = PRETRAINING_COUNTS
    normalizer: str = "num_masked"

    def temperature(self, step: jax.Array) -> jax.Array:
        return gumbel_temperature(step, self.gumbel_start, self.gumbel_end, self.gumbel_decay)

    def loss(
        self, model: nnx.Module, micro: Mapping[str, jax.Array], key: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
        out = model(
            micro["input_values"],
            attention_mask=micro.get("attention_mask"),
            mask_time_indices=micro.get("mask_time_indices"),
            negative_indices=micro.get("negative_indices"),
            deterministic=False,
            gumbel_temperature=self.temperature(step),
            key=key,
        )
        sums, counts = pretraining_sums(out)
        return out.loss, sums, counts

    def frozen_gradients(self, grads: nnx.State, step: jax.Array) -> nnx.State:
        return grads

    def metrics(
        self, sums: dict[str, jax.Array], counts: dict[str, jax.Array], accum: int, step: jax.Array
    ) -> dict[str, jax.Array]:
        num_masked = counts["num_masked"].astype(jnp.float32)
        return {
            "loss": sums["loss"] / num_masked,
            "contrastive_loss": sums["contrastive_loss"] / num_masked,
            "diversity_loss": sums["diversity_loss"] / num_masked,
            "feature_penalty": sums["feature_penalty"] / num_masked,
            # Counts are divided once, here (and again over a logging window, from their sums).
            "accuracy": counts["num_correct"].astype(jnp.float32) / jnp.maximum(num_masked, 1.0),
            # The accuracy a guess among the distractors that count would reach (above 1 / (1 + K)
            # when small codebooks give distractors their target's codewords).
            "chance_accuracy": sums["chance_correct"] / jnp.maximum(num_masked, 1.0),
            "code_perplexity": sums["code_perplexity"] / accum,
            "num_masked": num_masked,
            "num_correct": counts["num_correct"].astype(jnp.float32),
            "chance_correct": sums["chance_correct"],
            "gumbel_temperature": jnp.asarray(self.temperature(step), jnp.float32),
        }
