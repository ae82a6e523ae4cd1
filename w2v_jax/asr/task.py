"""CTC fine-tuning as a task of the training loop (`trainer.Task`; fairseq's `wav2vec_ctc` recipe,
transformers' `Wav2Vec2ForCTC`).

- `finetuned_model_config`: the model = a pretrained checkpoint's architecture (or the config's,
  for random initialisation) + the run's fine-tuning fields (dropouts, masks, CTC options) + the
  vocabulary's size and blank.
- `with_encoder`: the pretrained encoder's parameters (`checkpoints.load_encoder`) put into the
  fine-tuning model.
- `prepare_vocabulary`: the run's vocabulary (resume, a given file, the init checkpoint's, or built
  from the training labels).
- `FineTuningTask`: the pieces above, `objective.CTCObjective`, the labelled input pipeline,
  `evaluator.CTCEvaluator`, how its metrics are logged and shown (`METRIC_ROLES`) and the failure
  detectors that watch it: the loop's (`health.GradNormCollapse`, `health.Divergence`) and the
  all-blank CTC plateau (`CTCAllBlank`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import ml_collections
from flax import nnx

from w2v_jax.asr.error_rates import METRICS
from w2v_jax.asr.evaluator import CTCEvaluator, load_labelled_waveforms, read_best_record
from w2v_jax.asr.objective import CTCObjective
from w2v_jax.checkpoints.hf import load_vocabulary, save_processor_files
from w2v_jax.checkpoints.loading import input_normalization, load_encoder
from w2v_jax.checkpoints.run_layout import BEST_MODEL_DIR, MODEL_CONFIG_FILE
from w2v_jax.checkpoints.weights import with_parameters
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import default_manifest
from w2v_jax.data.labels import LabelKind, LabelSet, build_vocabulary
from w2v_jax.data.pipeline import TrainIterator, make_train_iterator
from w2v_jax.data.vocabulary import VOCAB_FILE, Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2Model
from w2v_jax.training import evaluation, health, metrics, optim
from w2v_jax.training.train_step import StepHyperparams, TrainState

logger = logging.getLogger(__name__)

# What a run config's `model` section sets on top of a pretrained checkpoint's architecture.
FINETUNING_FIELDS = (
    "hidden_dropout",
    "activation_dropout",
    "attention_dropout",
    "feat_proj_dropout",
    "final_dropout",
    "layerdrop",
    "mask_time_prob",
    "mask_time_length",
    "mask_time_min_masks",
    "mask_feature_prob",
    "mask_feature_length",
    "mask_feature_min_masks",
    "feature_grad_mult",
    "ctc_loss_reduction",
    "ctc_zero_infinity",
    "attention_implementation",
)


def finetuned_model_config(
    model_section: ml_collections.ConfigDict, vocabulary: Vocabulary, init_config: Wav2Vec2Config | None = None
) -> Wav2Vec2Config:
    """The fine-tuning model's config.

    Args:
      model_section: the run config's `model` (all `Wav2Vec2Config` fields).
      vocabulary: sets `vocab_size` and `pad_token_id` (the blank).
      init_config: a pretrained checkpoint's config: its architecture is kept, only
        `FINETUNING_FIELDS` come from `model_section`. None: everything from `model_section`.
    """
    values = model_section.to_dict()
    unknown = set(values) - {f.name for f in dataclasses.fields(Wav2Vec2Config)}
    if unknown:
        raise ValueError(f"unknown Wav2Vec2Config fields in the run config's model section: {sorted(unknown)}")
    heads = dict(vocab_size=len(vocabulary), pad_token_id=vocabulary.pad_id)
    if init_config is None:
        return Wav2Vec2Config(**{**values, **heads})
    return init_config.replace(**{name: values[name] for name in FINETUNING_FIELDS}, **heads)


def with_encoder(params: nnx.State, encoder: nnx.State) -> nnx.State:
    """`Wav2Vec2ForCTC` parameters with `wav2vec2.*` replaced by `encoder`'s (shapes must agree)."""
    return with_parameters(params, encoder, under=("wav2vec2",), source="the pretrained encoder")


def prepare_vocabulary(
    workdir: pathlib.Path, train_manifest: str | os.PathLike, kind: LabelKind, vocabulary_path: str, init: str
) -> Vocabulary:
    """The run's vocabulary: the workdir's `vocab.json` on a resume; else `vocabulary_path` (a
    vocab.json or a folder with one), else the init checkpoint's (a fine-tuned transformers folder),
    else built from the training labels."""
    if (workdir / VOCAB_FILE).is_file():
        resumed = load_vocabulary(workdir)
        assert resumed is not None  # the file is there
        return resumed
    if vocabulary_path:
        path = pathlib.Path(vocabulary_path)
        vocabulary = load_vocabulary(path) if path.is_dir() else Vocabulary.load(path)
        if vocabulary is None:
            raise ValueError(f"data.vocabulary={vocabulary_path}: no {VOCAB_FILE} there")
    elif init and (from_init := load_vocabulary(init)) is not None:
        vocabulary = from_init
    else:
        vocabulary = build_vocabulary(train_manifest, kind)
    logger.info("vocabulary: %d tokens (%s)", len(vocabulary), " ".join(vocabulary.tokens[:40]))
    return vocabulary


@dataclasses.dataclass
class CTCAllBlank:
    """The blank is the argmax of at least `fraction` of the frames, from update `after` on (the end of
    the warmup and of the frozen-encoder updates: CTC emits blanks first, then characters)."""

    after: int = 0
    fraction: float = 0.98
    name: ClassVar[str] = "ctc_all_blank"
    advice: ClassVar[str] = (
        "the all-blank CTC plateau: train for more updates or raise train.learning_rate for the new head; "
        "check the labels and the vocabulary's blank"
    )

    def check(self, record: Mapping[str, Any]) -> str | None:
        blank = health.record_value(record, "blank_fraction")
        if blank is not None and int(record["step"]) >= self.after and blank >= self.fraction:
            return f"blank is the argmax of {blank:.1%} of the frames"
        return None


# How a logging window reduces `CTCObjective.metrics` and what the progress bar shows.
METRIC_ROLES = metrics.MetricRoles(
    summed=("num_frames", "num_blank_frames"),
    ratios={"blank_fraction": ("num_blank_frames", "num_frames")},
    progress={"loss": "loss", "valid_wer": "wer", "valid_cer": "cer", "valid_per": "per"},
    valid_progress={"cer": "valid cer"},
)

PANELS = (
    ("loss", "CTC loss per utterance"),
    ("loss_per_token", "CTC loss per label"),
    ("wer", "word error rate"),
    ("cer", "character error rate"),
    ("per", "phone error rate"),
)


class FineTuningTask:
    """CTC fine-tuning as a `trainer.Task` (`experiments/configs/finetune.py` configs).

    On the first run it settles the vocabulary and the model config (`prepare_vocabulary`,
    `finetuned_model_config`) and writes both to the workdir (`vocab.json` + tokenizer files,
    `model_config.json`); a resume reads them back, so it neither rebuilds them nor needs `init`.
    """

    name = "finetune"
    model_class = Wav2Vec2ForCTC
    metric_roles = METRIC_ROLES

    def __init__(self):
        self.vocabulary: Vocabulary | None = None
        self._model_config: Wav2Vec2Config | None = None
        self._encoder: nnx.State | None = None
        self._workdir: pathlib.Path | None = None
        self._primary = True
        # Whether the audio is normalised per utterance: `data.normalize`, unless the init checkpoint
        # says what its encoder was pretrained on (fairseq's `task.normalize`), which wins.
        self.normalize = True

    def prepare(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, *, primary: bool) -> None:
        data = config.data
        if data.labels not in METRICS:
            raise ValueError(f"data.labels must be one of {sorted(METRICS)}, got {data.labels!r}")
        if not data.pad:
            raise ValueError("data.pad must be True for fine-tuning: labelled audio is never cropped")
        if config.train.best_metric not in METRICS[data.labels]:
            raise ValueError(
                f"train.best_metric must be one of {METRICS[data.labels]} for {data.labels} labels, "
                f"got {config.train.best_metric!r}"
            )
        self._workdir, self._primary = workdir, primary
        stored = workdir / MODEL_CONFIG_FILE
        self.vocabulary = prepare_vocabulary(
            workdir, _train_manifest(config), data.labels, data.vocabulary, config.init
        )
        if stored.is_file():
            self._model_config = Wav2Vec2Config.from_json_file(stored)
            self.normalize = input_normalization(workdir)  # as the first run settled it
            return
        init_config, self.normalize = None, data.normalize
        if config.init:
            init_config, self._encoder, init_normalize = load_encoder(config.init)
            logger.info("initialising the encoder from %s", config.init)
            if init_normalize is not None and init_normalize != data.normalize:
                logger.warning(
                    "%s was pretrained on %s audio: fine-tuning feeds it the same (data.normalize=%s ignored)",
                    config.init,
                    "normalised" if init_normalize else "raw (unnormalised)",
                    data.normalize,
                )
                self.normalize = init_normalize
        self._model_config = finetuned_model_config(config.model, self.vocabulary, init_config)
        if primary:
            save_processor_files(self.vocabulary, self._model_config, workdir, do_normalize=self.normalize)
            self._model_config.to_json_file(stored)

    def _settled(self) -> tuple[Wav2Vec2Config, Vocabulary]:
        """The model config and vocabulary `prepare` settled."""
        if self._model_config is None or self.vocabulary is None:
            raise RuntimeError("FineTuningTask.prepare has not run: the training loop calls it first")
        return self._model_config, self.vocabulary

    def model_config(self, config: ml_collections.ConfigDict) -> Wav2Vec2Config:
        return self._settled()[0]

    def optimizer_and_hyperparams(self, config: ml_collections.ConfigDict) -> tuple[Any, StepHyperparams]:
        train = config.train
        objective = CTCObjective(
            freeze_finetune_updates=train.freeze_finetune_updates,
            use_attention_mask=self._settled()[0].feat_extract_norm == "layer",
        )
        hparams = StepHyperparams(
            learning_rate=optim.schedule_from_train_config(train),
            objective=objective,
            grad_accum_steps=train.grad_accum_steps,
        )
        return optim.optimizer_from_train_config(train), hparams

    def initial_state(self, state: TrainState) -> TrainState:
        if self._encoder is None:
            return state
        params = with_encoder(state.params, self._encoder)
        return dataclasses.replace(
            state, params=jax.device_put(params, jax.tree.map(lambda x: x.sharding, state.params))
        )

    def _labels(self, manifest: str, config) -> LabelSet:
        model_config, vocabulary = self._settled()
        num_frames = nnx.eval_shape(lambda: Wav2Vec2Model(model_config)).num_frames
        labels = LabelSet(manifest, config.data.labels, vocabulary, num_frames)
        logger.info("%s: %s", manifest, labels.summary())
        return labels

    def data_iterator(
        self, config: ml_collections.ConfigDict, *, batch_size: int, shard_index: int, shard_count: int
    ) -> TrainIterator:
        data = config.data
        manifest = _train_manifest(config)
        return make_train_iterator(
            manifest,
            batch_size=batch_size,
            seed=config.train.seed,
            max_sample_size=data.max_sample_size,
            min_sample_size=data.min_sample_size,
            pad=True,
            normalize=self.normalize,
            num_workers=data.num_workers,
            shard_index=shard_index,
            shard_count=shard_count,
            strict=data.strict,
            max_skip_fraction=data.max_skip_fraction,
            allow_outside_root=data.allow_outside_root,
            num_buckets=data.num_buckets,
            labels=self._labels(manifest, config),
        )

    def make_evaluator(
        self, config: ml_collections.ConfigDict, graphdef: Any, mesh: jax.sharding.Mesh, state_shardings: Any
    ) -> evaluation.Evaluator:
        del mesh, state_shardings  # evaluated on the default device, as `transcribe` runs
        manifest = config.data.valid_manifest or str(default_manifest("valid"))
        waveforms, references = load_labelled_waveforms(
            manifest, self._labels(manifest, config), normalize=self.normalize
        )
        logger.info("validation: %d utterances from %s", len(waveforms), manifest)
        model_config, vocabulary = self._settled()
        return CTCEvaluator(
            graphdef,
            model_config,
            waveforms,
            references,
            vocabulary,
            config.data.labels,
            batch_size=config.train.eval_batch_size,
            workdir=self._workdir,
            best_metric=config.train.best_metric,
            write=self._primary,
            normalize=self.normalize,
        )

    def detectors(self, config: ml_collections.ConfigDict) -> Sequence[health.Detector]:
        """A collapsed gradient norm, divergence, and the all-blank plateau once the warmup and the
        frozen-encoder updates are over (CTC's first updates are all blank by design)."""
        train = config.train
        return [
            *health.loop_detectors(config, loss="loss_per_token"),
            CTCAllBlank(after=max(train.get("warmup_steps", 0), train.get("freeze_finetune_updates", 0))),
        ]

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        """The end-of-run summary's lines on what fine-tuning measured: the CTC loss, the validation
        error rates and the best model kept."""
        lines = []
        train, valid = summary["last_logged"], summary["last_valid"]
        if train:
            lines.append(f"  train (step {train['step']}): " + metrics.format_values(train, TRAIN_SUMMARY))
        if valid:
            rates = [(name, name.upper(), ".4f") for name in ("wer", "cer", "per") if name in valid]
            lines.append(f"  valid (step {valid['step']}): " + metrics.format_values(valid, rates))
        record = read_best_record(self._workdir) if self._workdir is not None else None
        if record is not None and self._workdir is not None:
            lines.append(
                f"  best model: {record['metric'].upper()} {record['value']:.4f} at step {record['step']} "
                f"in {self._workdir / BEST_MODEL_DIR}"
            )
        return lines

    def plot(self, records: list[dict[str, Any]], workdir: pathlib.Path) -> None:
        panels = [
            (name, title)
            for name, title in PANELS
            if any(r.get(name) is not None or r.get(f"valid_{name}") is not None for r in records)
        ]
        metrics.plot_loss_curve(records, workdir / metrics.LOSS_CURVE_FILE, panels)


# (name, label, format) of the training figures a fine-tuning run's summary reports.
TRAIN_SUMMARY = (("loss", "CTC loss per utterance", ".4f"), ("loss_per_token", "per label", ".4f"))


def _train_manifest(config: ml_collections.ConfigDict) -> str:
    return config.data.train_manifest or str(default_manifest("train"))
