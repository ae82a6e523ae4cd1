"""The pretraining objective of a frozen model on held-out audio, and its codebook usage.

`validation_metrics` runs the contrastive task in evaluation mode (argmax codewords, no dropout):
loss, contrastive accuracy, code perplexity, and the codebook-usage histogram `[G, V]` (how often
each codeword is chosen over every frame). It shares the validation inside training
(`pretraining.evaluator`): the model's masks and distractors (`training_draws.masks_and_negatives`)
and the totals of the objective (`pretraining.objective.PretrainingTotals`). Where it differs, on
purpose: the waveforms are batched by equal length (`data.utterances.equal_length_batches`: no
padding, a few compiles, any model, no training config), the masks come from keys of its own seed
and batch number (so a checkpoint's figures are comparable across runs, whatever their training
seed), an utterance with too few masked frames for distinct distractors is left out of the loss, and
every frame counts in the codebook histogram.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.data.utterances import equal_length_batches
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.pretraining.objective import PretrainingTotals, pretraining_sums
from w2v_jax.quantization import code_perplexity
from w2v_jax.training_draws import masks_and_negatives


@nnx.jit
def _objective(module: Wav2Vec2ForPreTraining, x: jax.Array, mask: jax.Array, negatives: jax.Array):
    """Evaluation-mode sums and counts (`pretraining_sums`) and per-utterance codeword counts
    `[batch, G, V]` (every frame)."""
    out = module(x, mask_time_indices=mask, negative_indices=negatives, deterministic=True)
    counts = jax.nn.one_hot(out.codevector_indices, module.quantizer.num_vars, dtype=jnp.int32).sum(axis=1)
    sums, num = pretraining_sums(out)
    return sums | num, counts


# One compile per batch shape for the mask sampler's many small ops.
_masks_and_negatives = jax.jit(masks_and_negatives, static_argnums=(2, 3, 4))


@dataclasses.dataclass(frozen=True)
class ValidationMetrics:
    """The pretraining objective on held-out audio, evaluation mode.

    Attributes:
      loss, contrastive_loss, diversity_loss, feature_penalty: per masked frame (sums over
        batches / masked frames; loss includes the weighted diversity loss and feature penalty).
      accuracy: contrastive accuracy over every masked frame.
      chance_accuracy: the accuracy of a guess among each masked frame's target and the
        distractors that count, averaged over masked frames (`chance_correct` of the model's
        outputs): 1 / (1 + num_negatives) when no distractor has its target's codewords, more when
        a small codebook makes them collide (such a distractor's logit is -inf).
      batch_perplexity: mean over batches of the model's code perplexity (over masked frames).
      code_perplexity: perplexity of the whole set's codeword histogram (every frame).
      codebook_usage: `[G, V]` int, how often each codeword was chosen (every frame).
      used_fraction: share of the G * V codewords chosen at least once.
      num_masked: masked frames counted; skipped_utterances: too short for the distractors.
    """

    loss: float
    contrastive_loss: float
    diversity_loss: float
    feature_penalty: float
    accuracy: float
    chance_accuracy: float
    batch_perplexity: float
    code_perplexity: float
    codebook_usage: np.ndarray
    used_fraction: float
    num_masked: int
    skipped_utterances: int


def validation_metrics(
    model: Wav2Vec2ForPreTraining, waveforms: Sequence[np.ndarray], *, seed: int = 0, batch_size: int = 8
) -> ValidationMetrics:
    """Runs the pretraining task in evaluation mode on `waveforms` (masks and distractors from `seed`).

    Utterances whose sampled mask has no more than num_negatives frames can't have distinct
    distractors; they are left out of the loss (counted in `skipped_utterances`) but their frames
    still count in the codebook histogram.
    """
    config = model.config
    groups, num_vars = config.num_codevector_groups, config.num_codevectors_per_group
    key = jax.random.key(seed)
    totals = PretrainingTotals()
    usage = np.zeros((groups, num_vars), np.int64)
    skipped = 0
    for batch_index, (chunk, x) in enumerate(equal_length_batches(waveforms, batch_size)):
        batch_key = jax.random.fold_in(key, batch_index)
        mask, negatives = _masks_and_negatives(
            jax.random.fold_in(batch_key, 0),
            jax.random.fold_in(batch_key, 1),
            config,
            batch_size,
            int(model.num_frames(x.shape[1])),
        )
        mask = np.array(mask)
        mask[len(chunk) :] = False  # filler rows
        too_few = mask[: len(chunk)].sum(axis=1) <= config.num_negatives
        skipped += int(too_few.sum())
        mask[: len(chunk)][too_few] = False
        values, counts = jax.device_get(_objective(model, jnp.asarray(x), jnp.asarray(mask), negatives))
        usage += counts[: len(chunk)].sum(axis=0)
        if values["num_masked"] > 0:
            totals.add(values)
    metrics = totals.metrics()
    marginal = usage / np.maximum(usage.sum(axis=1, keepdims=True), 1)
    return ValidationMetrics(
        loss=metrics["loss"],
        contrastive_loss=metrics["contrastive_loss"],
        diversity_loss=metrics["diversity_loss"],
        feature_penalty=metrics["feature_penalty"],
        accuracy=metrics["accuracy"],
        chance_accuracy=metrics["chance_accuracy"],
        batch_perplexity=metrics["code_perplexity"],
        code_perplexity=float(code_perplexity(jnp.asarray(marginal, jnp.float32))),
        codebook_usage=usage,
        used_fraction=float(np.mean(usage > 0)),
        num_masked=int(metrics["num_masked"]),  # an int already (`PretrainingTotals.metrics`)
        skipped_utterances=skipped,
    )
