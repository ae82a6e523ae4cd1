"""wav2vec 2.0 pretraining as a task of the training loop (`trainer.Task`).

- `pretraining_hyperparams`: the optimizer and step settings of a pretrain config's `train` section.
- `token_batch_multiple`: what a token budget's batch sizes are rounded to.
- `PretrainingTask`: the model of the config's `model` section (or, continuing from `config.init`,
  that checkpoint's architecture and parameters: `continued`), `objective.PretrainingObjective`,
  the input pipeline on `data.train_manifest` (default: the embedded corpus), validation on
  `data.valid_manifest` (`evaluator.PretrainingEvaluator`), how its metrics are logged and shown
  (`METRIC_ROLES`) and the failure detectors that watch it: the loop's (`health.GradNormCollapse`,
  `health.Divergence`) and pretraining's own, `CodebookCollapse` and `TrivialSolution`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import ml_collections
import optax
from flax import nnx

from w2v_jax.checkpoints.checkpointer import has_checkpoints
from w2v_jax.checkpoints.loading import load_model
from w2v_jax.checkpoints.run_layout import CHECKPOINTS_DIR, MODEL_CONFIG_FILE
from w2v_jax.checkpoints.weights import ParamPath, with_parameters
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import default_manifest
from w2v_jax.data.pipeline import TrainIterator, make_train_iterator
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.pretraining.continued import architecture_differences, continued_model_config, source_parameters
from w2v_jax.pretraining.evaluator import pretraining_evaluator
from w2v_jax.pretraining.objective import PretrainingObjective
from w2v_jax.training import evaluation, health, metrics, optim
from w2v_jax.training.train_step import StepHyperparams, TrainState

logger = logging.getLogger(__name__)


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


@dataclasses.dataclass
class CodebookCollapse:
    """Code perplexity at most `per_group` x the number of codebook groups (its floor is the number
    of groups: one codeword per group). `num_groups` None: no codebook, nothing to check."""

    num_groups: int | None
    per_group: float = 2.0
    name: ClassVar[str] = "codebook_collapse"
    advice: ClassVar[str] = (
        "raise model.diversity_loss_weight (BASE 0.1), keep the Gumbel temperature high for longer "
        "(train.max_gumbel_temperature, a slower train.gumbel_temperature_decay) or lower train.learning_rate"
    )

    def check(self, record: Mapping[str, Any]) -> str | None:
        perplexity = health.record_value(record, "code_perplexity")
        if self.num_groups and perplexity is not None and perplexity <= self.per_group * self.num_groups:
            return f"code perplexity {perplexity:.2f} <= {self.per_group:g} x {self.num_groups} groups"
        return None


@dataclasses.dataclass
class TrivialSolution:
    """Contrastive loss per masked frame <= `max_loss` with accuracy >= `min_accuracy`: positives
    told from distractors for free (identical codewords, or masks that leak the target)."""

    max_loss: float = 0.05
    min_accuracy: float = 0.99
    name: ClassVar[str] = "trivial_solution"
    advice: ClassVar[str] = (
        "the positives are found for free: check masking (model.mask_time_prob 0.65, mask_time_length 10), "
        "model.num_negatives and a collapsed codebook (model.diversity_loss_weight)"
    )

    def check(self, record: Mapping[str, Any]) -> str | None:
        contrastive, accuracy = health.record_value(record, "contrastive_loss"), health.record_value(record, "accuracy")
        if contrastive is None or accuracy is None:
            return None
        if contrastive <= self.max_loss and accuracy >= self.min_accuracy:
            return f"contrastive loss {contrastive:.4f}, accuracy {accuracy:.3f}"
        return None


# How a logging window reduces `PretrainingObjective.metrics` and what the progress bar shows.
METRIC_ROLES = metrics.MetricRoles(
    summed=("num_masked", "num_correct", "chance_correct"),
    ratios={"accuracy": ("num_correct", "num_masked"), "chance_accuracy": ("chance_correct", "num_masked")},
    progress={"loss": "loss", "accuracy": "acc"},
    valid_progress={"loss": "valid loss"},
)

# (name, label, format) of the figures a pretraining run's summary reports.
SUMMARY_METRICS = (
    ("loss", "loss", ".4f"),
    ("accuracy", "accuracy", ".3f"),
    ("code_perplexity", "code perplexity", ".2f"),
)

# (metric, title) of the loss curve's panels.
PANELS = (
    ("loss", "loss per masked frame"),
    ("accuracy", "contrastive accuracy"),
    ("code_perplexity", "code perplexity"),
)


class PretrainingTask:
    """wav2vec 2.0 pretraining on `data.train_manifest` (default: the embedded corpus).

    With `config.init` (continued pretraining, `continued`) the first run reads the source
    checkpoint once: its architecture with the config's training fields is the model, written to the
    workdir (`model_config.json`), and its parameters are the fresh run's. A resume reads that file
    and its own checkpoints, never the source.
    """

    name = "pretrain"
    model_class = Wav2Vec2ForPreTraining
    metric_roles = METRIC_ROLES

    def __init__(self) -> None:
        self._model_config: Wav2Vec2Config | None = None
        self._source: tuple[nnx.State, ParamPath] | None = None

    def prepare(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, *, primary: bool) -> None:
        init = config.get("init", "")
        self._source = None  # a task object may run several runs (a sweep's points)
        if not init:
            self._model_config = Wav2Vec2Config.from_run_config(config)
            return
        stored = workdir / MODEL_CONFIG_FILE
        if stored.is_file() and has_checkpoints(workdir / CHECKPOINTS_DIR):
            self._model_config = Wav2Vec2Config.from_json_file(stored)
            logger.info("continued pretraining from %s: resuming, the model from %s", init, stored)
            return
        source = load_model(init)
        self._source = source_parameters(source, init, fresh_heads=config.get("init_fresh_heads", False))
        self._model_config = continued_model_config(config.model, source.config)
        differences = architecture_differences(config.model, source.config)
        logger.info(
            "continued pretraining from %s (%s%s); architecture fields it sets differently from the config: %s",
            init,
            type(source).__name__,
            ", fresh heads" if self._source[1] else "",
            "; ".join(differences) or "none",
        )
        if primary:
            self._model_config.to_json_file(stored)

    def model_config(self, config: ml_collections.ConfigDict) -> Wav2Vec2Config:
        if self._model_config is not None:
            return self._model_config
        if config.get("init", ""):
            raise RuntimeError("a continued run's model is known once PretrainingTask.prepare has read config.init")
        return Wav2Vec2Config.from_run_config(config)

    def optimizer_and_hyperparams(self, config: ml_collections.ConfigDict) -> tuple[Any, StepHyperparams]:
        return pretraining_hyperparams(config.train)

    def initial_state(self, state: TrainState) -> TrainState:
        if self._source is None:
            return state
        parameters, under = self._source
        params = with_parameters(state.params, parameters, under=under, source="the init checkpoint")
        self._source = None  # the source's arrays are not kept beside the run's
        return dataclasses.replace(
            state, params=jax.device_put(params, jax.tree.map(lambda x: x.sharding, state.params))
        )

    def data_iterator(
        self, config: ml_collections.ConfigDict, *, batch_size: int, shard_index: int, shard_count: int
    ) -> TrainIterator:
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

    def make_evaluator(
        self, config: ml_collections.ConfigDict, graphdef: Any, mesh: jax.sharding.Mesh, state_shardings: Any
    ) -> evaluation.Evaluator:
        return pretraining_evaluator(config, self.model_config(config), graphdef, mesh, state_shardings)

    def detectors(self, config: ml_collections.ConfigDict) -> Sequence[health.Detector]:
        """Codebook collapse (the model's codebook groups: a continued run's source's), a trivial
        solution, a collapsed gradient norm, divergence."""
        return [
            CodebookCollapse((self._model_config or config.model).num_codevector_groups),
            TrivialSolution(),
            *health.loop_detectors(config, loss="loss"),
        ]

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        """The end-of-run summary's lines on what this run measured: loss, accuracy, code perplexity."""
        lines = []
        for label, values in (("train", summary["last_logged"]), ("valid", summary["last_valid"])):
            if values:
                lines.append(f"  {label} (step {values['step']}): " + metrics.format_values(values, SUMMARY_METRICS))
        return lines

    def plot(self, records: list[dict[str, Any]], workdir: pathlib.Path) -> None:
        metrics.plot_loss_curve(records, workdir / metrics.LOSS_CURVE_FILE, PANELS)
