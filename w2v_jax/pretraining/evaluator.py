"""Validation inside pretraining: the contrastive task on held-out audio (a `training.evaluation.Evaluator`).

`PretrainingEvaluator` runs the contrastive task in evaluation mode (no dropout, argmax codewords)
on a validation manifest, every utterance counted once, with masks and distractors drawn once from a
fixed key, so successive evaluations differ only by the parameters; its values are
`objective.PretrainingTotals.metrics()`. `pretraining_evaluator` builds it from a pretrain config.
Batches are made as training makes them (`validation_batches`): rows sorted by length, each batch
cropped to its shortest utterance (group-norm models; GroupNorm normalises over time, so padding
would change the real frames' outputs) or zero-padded with an attention mask (layer-norm models,
exact under padding), to one of the training pipeline's bucket lengths, so the step compiles once
per bucket.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from w2v_jax import sharding
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import default_manifest
from w2v_jax.data.manifest import load_waveforms
from w2v_jax.data.pipeline import assign_buckets, bucket_lengths
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.pretraining.objective import PretrainingTotals, pretraining_sums
from w2v_jax.training_draws import sample_masks_and_negatives

logger = logging.getLogger(__name__)

# One compile per batch shape instead of dispatching the sampler's many small ops one by one.
_sample_masks_and_negatives = jax.jit(sample_masks_and_negatives, static_argnums=(1, 2, 3))


@dataclasses.dataclass(frozen=True)
class ValidationBatch:
    """One fixed validation batch.

    Attributes:
      input_values: float32 `[batch, samples]`; filler rows (a short last batch) are zeros.
      attention_mask: int32 `[batch, samples]`, 1 on real samples (0 on filler rows and padding).
      mask_time_indices: bool `[batch, frames]`, the masked frames (none on filler rows).
      negative_indices: int32 `[batch, frames, K]`, the distractors (frame indices within the row).
    """

    input_values: np.ndarray
    attention_mask: np.ndarray
    mask_time_indices: np.ndarray
    negative_indices: np.ndarray


def validation_batches(
    waveforms: Sequence[np.ndarray],
    config: Wav2Vec2Config,
    *,
    batch_size: int,
    max_sample_size: int,
    min_sample_size: int,
    num_buckets: int = 8,
    seed: int = 0,
) -> tuple[list[ValidationBatch], int]:
    """Fixed validation batches of `waveforms`, each usable utterance in exactly one row.

    Utterances are sorted by length and cut into batches of `batch_size` rows. Group-norm models
    (`config.feat_extract_norm == "group"`) get every row of a batch cropped (from its start) to
    the largest bucket length <= the batch's shortest utterance; layer-norm models get rows
    zero-padded to the smallest bucket length >= the batch's longest (longer ones cropped to
    `max_sample_size`). Bucket lengths are the training pipeline's (`data.bucket_lengths`).
    Masks and distractors come from `seed` and the batch number.

    Returns:
      (batches, skipped): utterances shorter than `min_sample_size` (or the receptive field) are
      skipped, as in training.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pad = config.feat_extract_norm == "layer"
    buckets = bucket_lengths(min_sample_size, max_sample_size, num_buckets, pad=pad)
    lengths = np.asarray([len(w) for w in waveforms], np.int64)
    usable = assign_buckets(lengths, buckets, pad=pad, max_sample_size=max_sample_size) >= 0
    usable &= lengths >= min_sample_size
    order = [int(i) for i in np.argsort(lengths, kind="stable") if usable[i]]
    # Shapes only: the frame arithmetic of the model's conv stack, nothing initialised.
    num_frames = nnx.eval_shape(lambda: Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0))).num_frames
    key = jax.random.key(seed)
    batches = []
    for number, begin in enumerate(range(0, len(order), batch_size)):
        rows = order[begin : begin + batch_size]
        row_lengths = np.minimum(lengths[rows], max_sample_size)
        if pad:
            width = int(buckets[np.searchsorted(buckets, row_lengths.max(), side="left")])
        else:
            width = int(buckets[np.searchsorted(buckets, row_lengths.min(), side="right") - 1])
        input_values = np.zeros((batch_size, width), np.float32)
        attention_mask = np.zeros((batch_size, width), np.int32)
        for slot, (index, keep) in enumerate(zip(rows, np.minimum(row_lengths, width))):
            input_values[slot, :keep] = waveforms[index][:keep]
            attention_mask[slot, :keep] = 1
        frames = int(num_frames(width))
        frame_lengths = num_frames(attention_mask.sum(axis=1))
        mask, negatives = _sample_masks_and_negatives(
            jax.random.fold_in(key, number), config, batch_size, frames, jnp.asarray(frame_lengths, jnp.int32)
        )
        mask = np.asarray(mask) & (np.arange(frames)[None, :] < frame_lengths[:, None])
        batches.append(ValidationBatch(input_values, attention_mask, mask, np.asarray(negatives, np.int32)))
    return batches, int((~usable).sum())


class PretrainingEvaluator:
    """The pretraining objective on fixed validation batches (an `Evaluator`): `PretrainingTotals.metrics()`."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        batches: Sequence[ValidationBatch],
        mesh: Mesh,
        param_shardings: Any,
        model_state_shardings: Any,
    ):
        if not batches:
            raise ValueError("the validation set has no usable utterance (all shorter than data.min_sample_size?)")
        self.batches = list(batches)
        self.num_compiles = 0
        self.seconds = 0.0  # spent evaluating, compiles included (the trainer leaves it out of throughput)
        self._mesh = mesh
        self._batch_sharding = sharding.batch_sharding(mesh)

        def sums(params, model_state, batch):
            self.num_compiles += 1  # trace time only
            logger.info("compiling the validation step for batch shape %s", tuple(batch["input_values"].shape))
            model = nnx.merge(graphdef, params, model_state)
            out = model(
                batch["input_values"],
                attention_mask=batch["attention_mask"],
                mask_time_indices=batch["mask_time_indices"],
                negative_indices=batch["negative_indices"],
                deterministic=True,
            )
            batch_sums, counts = pretraining_sums(out)
            return batch_sums | counts

        self._step = jax.jit(
            sums,
            in_shardings=(param_shardings, model_state_shardings, self._batch_sharding),
            out_shardings=sharding.replicated(mesh),
        )

    def _device_batch(self, batch: ValidationBatch) -> dict[str, jax.Array]:
        rows = batch.input_values.shape[0]
        process, count = jax.process_index(), jax.process_count()
        local = slice(process * rows // count, (process + 1) * rows // count)
        return {
            name: jax.make_array_from_process_local_data(self._batch_sharding, value[local], value.shape)
            for name, value in dataclasses.asdict(batch).items()
        }

    def __call__(self, state: Any, step: int) -> dict[str, float]:
        """Evaluates `state.params` (a `train_step.TrainState`); `step` is only logged."""
        start = time.perf_counter()
        totals = PretrainingTotals()
        for batch in self.batches:
            totals.add(jax.device_get(self._step(state.params, state.model_state, self._device_batch(batch))))
        metrics = totals.metrics()
        self.seconds += time.perf_counter() - start
        logger.info("step %d validation: loss %.4f, accuracy %.4f", step, metrics["loss"], metrics["accuracy"])
        return metrics


def pretraining_evaluator(
    config: ml_collections.ConfigDict,
    model_config: Wav2Vec2Config,
    graphdef: Any,
    mesh: jax.sharding.Mesh,
    state_shardings: Any,
) -> PretrainingEvaluator:
    """The validation of a pretrain config: `data.valid_manifest` (empty: the embedded corpus's
    valid split), batches of `train.batch_size` made as training makes them for the run's model
    (`model_config`: the config's `model` section, or a continued run's source architecture), masks
    from `train.seed`."""
    manifest = config.data.get("valid_manifest", "") or str(default_manifest("valid"))
    batches, skipped = validation_batches(
        load_waveforms(manifest, normalize=config.data.normalize),
        model_config,
        batch_size=config.train.batch_size,
        max_sample_size=config.data.max_sample_size,
        min_sample_size=config.data.min_sample_size,
        seed=config.train.seed,
    )
    logger.info("validation: %d batches from %s (%d utterances too short, skipped)", len(batches), manifest, skipped)
    return PretrainingEvaluator(graphdef, batches, mesh, state_shardings.params, state_shardings.model_state)
