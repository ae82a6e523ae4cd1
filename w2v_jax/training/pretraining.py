"""wav2vec 2.0 pretraining as a task of the training loop: its objective, step settings and validation.

- `PretrainingObjective`: what the train step optimises: the contrastive + diversity (+ feature
  penalty) loss summed over masked frames, the gradient divided once by their count (fairseq's
  sample size), the Gumbel temperature a function of the step.
- `pretraining_hyperparams`: the optimizer and step settings of a pretrain config's `train` section.
- `PretrainingTask`: the loop's default `trainer.Task`: the model of the config's `model` section,
  the input pipeline on `data.train_manifest` (default: the embedded corpus) and validation on
  `data.valid_manifest` (`evaluation.PretrainingEvaluator`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import default_manifest
from w2v_jax.data.manifest import load_waveforms
from w2v_jax.data.pipeline import make_train_iterator
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.quantization import gumbel_temperature
from w2v_jax.training import evaluation, metrics, optim
from w2v_jax.training.train_step import StepHyperparams

logger = logging.getLogger(__name__)


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
    sums: tuple[str, ...] = evaluation.PRETRAINING_SUMS
    counts: tuple[str, ...] = evaluation.PRETRAINING_COUNTS
    normalizer: str = "num_masked"

    def temperature(self, step: jax.Array) -> jax.Array:
        return gumbel_temperature(step, self.gumbel_start, self.gumbel_end, self.gumbel_decay)

    def loss(self, model, micro, key, step):
        out = model(
            micro["input_values"],
            attention_mask=micro.get("attention_mask"),
            mask_time_indices=micro.get("mask_time_indices"),
            negative_indices=micro.get("negative_indices"),
            deterministic=False,
            gumbel_temperature=self.temperature(step),
            key=key,
        )
        sums, counts = evaluation.pretraining_sums(out)
        return out.loss, sums, counts

    def frozen_gradients(self, grads, step):
        return grads

    def metrics(self, sums, counts, accum, step):
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


def pretraining_hyperparams(train: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, StepHyperparams]:
    """The optimizer and step settings (learning-rate and Gumbel schedules, accumulation) of a
    pretrain config's `train` section (`w2v_jax/configs/pretrain.py`)."""
    objective = PretrainingObjective(
        gumbel_start=train.max_gumbel_temperature,
        gumbel_end=train.min_gumbel_temperature,
        gumbel_decay=train.gumbel_temperature_decay,
    )
    hparams = StepHyperparams(
        learning_rate=optim.schedule_from_train_config(train),
        objective=objective,
        grad_accum_steps=train.grad_accum_steps,
    )
    return optim.optimizer_from_train_config(train), hparams


def token_batch_multiple(grad_accum_steps: int) -> int:
    """What a token budget's global batch sizes are rounded to: every device gets the same rows of
    every micro-batch (devices x accumulation steps), and every process the same rows."""
    return math.lcm(jax.device_count() * grad_accum_steps, jax.process_count())


def pretraining_evaluator(
    config: ml_collections.ConfigDict, graphdef: Any, mesh: jax.sharding.Mesh, state_shardings: Any
) -> evaluation.PretrainingEvaluator:
    """The validation of a pretrain config: `data.valid_manifest` (empty: the embedded corpus's
    valid split), batches of `train.batch_size` made as training makes them, masks from `train.seed`."""
    manifest = config.data.get("valid_manifest", "") or str(default_manifest("valid"))
    batches, skipped = evaluation.validation_batches(
        load_waveforms(manifest, normalize=config.data.normalize),
        Wav2Vec2Config.from_run_config(config),
        batch_size=config.train.batch_size,
        max_sample_size=config.data.max_sample_size,
        min_sample_size=config.data.min_sample_size,
        seed=config.train.seed,
    )
    logger.info("validation: %d batches from %s (%d utterances too short, skipped)", len(batches), manifest, skipped)
    return evaluation.PretrainingEvaluator(graphdef, batches, mesh, state_shardings.params, state_shardings.model_state)


class PretrainingTask:
    """wav2vec 2.0 pretraining on `data.train_manifest` (default: the embedded corpus)."""

    name = "pretrain"
    model_class = Wav2Vec2ForPreTraining
    progress_metrics = {"loss": "loss", "accuracy": "acc"}

    def prepare(self, config, workdir, *, primary):
        del config, workdir, primary

    def model_config(self, config):
        return Wav2Vec2Config.from_run_config(config)

    def optimizer_and_hyperparams(self, config):
        return pretraining_hyperparams(config.train)

    def initial_state(self, state):
        return state

    def data_iterator(self, config, *, batch_size, shard_index, shard_count):
        manifests = list(config.data.train_manifests)
        return make_train_iterator(
            manifests or config.data.train_manifest or str(default_manifest("train")),
            corpus_weights=config.data.train_weights,
            sampling_alpha=config.data.sampling_alpha,
            batch_size=batch_size,
            max_tokens=config.data.max_tokens,
            batch_multiple=token_batch_multiple(config.train.grad_accum_steps),
            num_buckets=config.data.num_buckets,
            seed=config.train.seed,
            max_sample_size=config.data.max_sample_size,
            min_sample_size=config.data.min_sample_size,
            pad=config.data.pad,
            normalize=config.data.normalize,
            num_workers=config.data.num_workers,
            shard_index=shard_index,
            shard_count=shard_count,
            strict=config.data.strict,
            max_skip_fraction=config.data.max_skip_fraction,
            allow_outside_root=config.data.allow_outside_root,
        )

    def make_evaluator(self, config, graphdef, mesh, state_shardings):
        return pretraining_evaluator(config, graphdef, mesh, state_shardings)

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        """The end-of-run summary's lines on what this run measured: loss, accuracy, code perplexity."""
        lines = []
        for label, values in (("train", summary["last_logged"]), ("valid", summary["last_valid"])):
            if values:
                lines.append(f"  {label} (step {values['step']}): " + metrics.format_values(values, SUMMARY_METRICS))
        return lines

    def plot(self, records, workdir):
        metrics.plot_loss_curve(records, workdir / metrics.LOSS_CURVE_FILE)


# (name, label, format) of the figures a pretraining run's summary reports.
SUMMARY_METRICS = (
    ("loss", "loss", ".4f"),
    ("accuracy", "accuracy", ".3f"),
    ("code_perplexity", "code perplexity", ".2f"),
)
