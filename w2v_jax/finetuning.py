"""CTC fine-tuning (fairseq's `wav2vec_ctc` recipe, transformers' `Wav2Vec2ForCTC`): the pieces the
training loop (`w2v_jax.trainer`) plugs in for this task.

- `CTCObjective`: what the train step optimises: the CTC loss summed over utterances, the gradient
  divided by the number of utterances (fairseq's `sentence_avg: true`), the Transformer and the
  rest of the encoder frozen (zero gradient) for the first `freeze_finetune_updates` updates. The
  feature encoder is frozen by `feature_grad_mult = 0` (fairseq's setting), whose gradient is zero.
- `finetuned_model_config`: the model = a pretrained checkpoint's architecture (or the config's,
  for random initialisation) + the run's fine-tuning fields (dropouts, masks, CTC options) + the
  vocabulary's size and blank.
- `load_encoder` / `with_encoder`: the pretrained encoder's parameters from a pretraining workdir,
  our folder format or a transformers folder, put into the fine-tuning model.
- `transcribe`: greedy transcripts of waveforms, batched: layer-norm models as padded batches with
  attention masks (exact: their outputs don't depend on padding), group-norm models in batches of
  equal-length utterances (exact, transformers' advice for them: no attention mask, no padding).
- `CTCEvaluator`: validation every `train.eval_every` updates: WER and CER (PER for phones) of
  the transcripts of the valid manifest (group-norm models zero-padded to a few widths without
  attention mask, as in training, rather than `transcribe`'s exact equal-length batches); keeps the best model by `train.best_metric` in
  `WORKDIR/best/` (our folder format + vocabulary), which `transcribe`, `evaluate` and `jax-to-hf`
  read by default.

Batches in training are padded to the input pipeline's bucket lengths (never cropped: a transcript
covers the whole utterance). Layer-norm models get the attention mask. Group-norm models (BASE) get
zero padding without an attention mask, as transformers' docs prescribe for them; their outputs then
depend slightly on the padding of the batch, which length buckets keep short. The CTC loss always
uses each utterance's real frame count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from w2v_jax import convert, error_rates, optim
from w2v_jax import metrics as metrics_lib
from w2v_jax import train_step as train_lib
from w2v_jax.checkpointing import BEST_MODEL_DIR, FINETUNED_MODEL_CONFIG, load_model
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.ctc import ctc_loss, greedy_decode
from w2v_jax.data import audio
from w2v_jax.data.labels import LabelSet, build_vocabulary
from w2v_jax.data.manifest import load_manifest
from w2v_jax.data import default_manifest
from w2v_jax.data.pipeline import TrainIterator, bucket_lengths, make_train_iterator
from w2v_jax.data.utterances import equal_length_batches
from w2v_jax.data.vocabulary import VOCAB_FILE, Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2Model

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = FINETUNED_MODEL_CONFIG  # the workdir's resolved Wav2Vec2Config
BEST_DIR = BEST_MODEL_DIR  # the best model so far, our folder format with its vocabulary
BEST_FILE = "best.json"  # {"step", "metric", "value", "history"} of the best model
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
)
METRICS = {"ltr": ("wer", "cer"), "phn": ("per",)}
# Between the tokens of a transcript: letters are joined (`|` is the space), phones spaced as in .phn files.
SEPARATORS = {"ltr": "", "phn": " "}


@dataclasses.dataclass(frozen=True)
class CTCObjective:
    """CTC fine-tuning as a `train_step.Objective` (see the module docstring).

    Attributes:
      freeze_finetune_updates: updates during which only `lm_head` learns.
      use_attention_mask: pass the attention mask to the model (layer-norm models); group-norm
        models get zero padding only.
    """

    freeze_finetune_updates: int = 0
    use_attention_mask: bool = True
    sums: tuple[str, ...] = ("loss",)
    counts: tuple[str, ...] = ("num_utterances", "num_label_tokens")
    normalizer: str = "num_utterances"

    def loss(self, model, micro, key, step):
        attention_mask = micro["attention_mask"]
        out = model(
            micro["input_values"],
            attention_mask if self.use_attention_mask else None,
            deterministic=False,
            key=key,
        )
        lengths = model.num_frames(jnp.sum(attention_mask.astype(jnp.int32), axis=-1)).astype(jnp.int32)
        labels = micro["labels"]
        config = model.config
        losses = ctc_loss(
            out.logits, lengths, labels, blank_id=config.pad_token_id, reduction="none",
            zero_infinity=config.ctc_zero_infinity,
        )
        loss = jnp.sum(losses)
        counts = {
            "num_utterances": jnp.sum(jnp.any(attention_mask > 0, axis=-1), dtype=jnp.int32),
            "num_label_tokens": jnp.sum((labels >= 0) & (labels != config.pad_token_id), dtype=jnp.int32),
        }
        return loss, {"loss": loss}, counts

    def frozen_gradients(self, grads, step):
        if self.freeze_finetune_updates <= 0:
            return grads
        frozen = step < self.freeze_finetune_updates

        def freeze(path, grad):
            in_encoder = getattr(path[0], "key", None) == "wav2vec2"
            return jnp.where(frozen, jnp.zeros_like(grad), grad) if in_encoder else grad

        return jax.tree_util.tree_map_with_path(freeze, grads)

    def metrics(self, sums, counts, accum, step):
        utterances = counts["num_utterances"].astype(jnp.float32)
        tokens = counts["num_label_tokens"].astype(jnp.float32)
        return {
            "loss": sums["loss"] / jnp.maximum(utterances, 1.0),
            "loss_per_token": sums["loss"] / jnp.maximum(tokens, 1.0),
            "num_utterances": utterances,
            "num_label_tokens": tokens,
            "encoder_frozen": (step < self.freeze_finetune_updates).astype(jnp.float32),
        }


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


def load_encoder(path: str | os.PathLike) -> tuple[Wav2Vec2Config, nnx.State]:
    """The encoder (`Wav2Vec2Model`) parameters of a checkpoint: a pretraining or fine-tuning
    workdir (newest checkpoint), our folder format or a transformers folder (`checkpointing.load_model`)."""
    model = load_model(path)
    encoder = model if isinstance(model, Wav2Vec2Model) else model.wav2vec2
    return model.config, nnx.state(encoder, nnx.Param)


def with_encoder(params: nnx.State, encoder: nnx.State) -> nnx.State:
    """`Wav2Vec2ForCTC` parameters with `wav2vec2.*` replaced by `encoder`'s (shapes must agree)."""
    replacement = {("wav2vec2", *path): variable for path, variable in nnx.to_flat_state(encoder)}
    flat = []
    for path, variable in nnx.to_flat_state(params):
        if path[0] == "wav2vec2":
            if path not in replacement:
                raise ValueError(f"the pretrained encoder has no parameter {'.'.join(map(str, path[1:]))}")
            new = replacement.pop(path)
            if tuple(new.shape) != tuple(variable.shape):
                raise ValueError(f"{'.'.join(map(str, path))}: shape {tuple(new.shape)} in the pretrained encoder, "
                                 f"{tuple(variable.shape)} in the model")
            variable = variable.replace(jnp.asarray(new[...], variable.dtype))
        flat.append((path, variable))
    if replacement:
        raise ValueError(f"the pretrained encoder has parameters the model lacks: {sorted(replacement)[:5]}")
    return nnx.from_flat_state(flat)


def prepare_vocabulary(workdir: pathlib.Path, train_manifest: str | os.PathLike, kind: str,
                       vocabulary_path: str, init: str) -> Vocabulary:
    """The run's vocabulary: the workdir's `vocab.json` on a resume; else `vocabulary_path` (a
    vocab.json or a folder with one), else the init checkpoint's (a fine-tuned transformers folder),
    else built from the training labels."""
    if (workdir / VOCAB_FILE).is_file():
        return convert.load_vocabulary(workdir)
    if vocabulary_path:
        path = pathlib.Path(vocabulary_path)
        vocabulary = convert.load_vocabulary(path) if path.is_dir() else Vocabulary.load(path)
        if vocabulary is None:
            raise ValueError(f"data.vocabulary={vocabulary_path}: no {VOCAB_FILE} there")
    elif init and convert.load_vocabulary(init) is not None:
        vocabulary = convert.load_vocabulary(init)
    else:
        vocabulary = build_vocabulary(train_manifest, kind)
    logger.info("vocabulary: %d tokens (%s)", len(vocabulary), " ".join(vocabulary.tokens[:40]))
    return vocabulary


Forward = Callable[[np.ndarray, np.ndarray | None], jax.Array]


def transcribe_waveforms(
    forward: Forward,
    waveforms: Sequence[np.ndarray],
    vocabulary: Vocabulary,
    config: Wav2Vec2Config,
    *,
    batch_size: int,
    num_frames: Callable[[Any], Any],
    exact: bool = True,
    separator: str = "",
) -> list[str]:
    """Greedy transcripts of waveforms, in order, batched as the module docstring says.

    Args:
      forward: `(input_values [batch, samples], attention_mask [batch, samples] | None) -> logits
        [batch, frames, vocab]`.
      waveforms: float32 `[samples]` each (normalised as the model was trained).
      vocabulary: the head's tokens.
      config: the model's config (its feature norm decides the batching).
      batch_size: rows per forward call.
      num_frames: samples -> frames of the model.
      exact: group-norm models in batches of equal-length utterances (each utterance's transcript
        as if alone, one compile per distinct length); False: zero-padded batches of a few fixed
        widths without attention mask, as they are trained (validation: few compiles).
      separator: between tokens (`SEPARATORS`: "" for letters, " " for phones).
    """
    texts: list[str | None] = [None] * len(waveforms)
    group_norm = config.feat_extract_norm == "group"
    if group_norm and exact:
        for indices, batch in equal_length_batches(waveforms, batch_size):
            logits = forward(batch, None)
            lengths = jnp.full((batch.shape[0],), logits.shape[1], jnp.int32)
            for index, text in zip(indices, greedy_decode(logits, lengths, vocabulary, separator)):
                texts[index] = text
        return texts
    lengths = np.asarray([len(w) for w in waveforms], np.int64)
    longest = max(int(lengths.max()), audio.RECEPTIVE_FIELD)
    # A few fixed widths (geometric, as the training buckets), so the forward compiles a few times.
    widths = bucket_lengths(audio.RECEPTIVE_FIELD, longest, 4, pad=True)
    order = np.argsort(lengths, kind="stable")
    for begin in range(0, len(order), batch_size):
        rows = order[begin : begin + batch_size]
        width = int(widths[np.searchsorted(widths, max(int(lengths[rows].max()), audio.RECEPTIVE_FIELD))])
        input_values = np.zeros((batch_size, width), np.float32)
        attention_mask = np.zeros((batch_size, width), np.int32)
        for slot, index in enumerate(rows):
            input_values[slot, : lengths[index]] = waveforms[index]
            attention_mask[slot, : lengths[index]] = 1
        attention_mask[len(rows) :, : audio.RECEPTIVE_FIELD] = 1  # filler rows: any valid length
        logits = forward(input_values, None if group_norm else attention_mask)
        frame_lengths = jnp.asarray(num_frames(attention_mask.sum(-1)), jnp.int32)
        for index, text in zip(rows, greedy_decode(logits, frame_lengths, vocabulary, separator)):
            texts[int(index)] = text
    return texts


@functools.partial(jax.jit, static_argnums=0)
def _eval_logits(graphdef: nnx.GraphDef, state: nnx.State, input_values: jax.Array,
                 attention_mask: jax.Array | None) -> jax.Array:
    return nnx.merge(graphdef, state)(input_values, attention_mask).logits


def model_forward(model: Wav2Vec2ForCTC) -> Forward:
    """A jitted eval-mode `Forward` of a model.

    One compiled function for every model of the same structure (the graph definition is a static
    argument): transcribing again, or with a reloaded checkpoint, reuses the compiles per input shape.
    """
    graphdef, state = nnx.split(model)
    return lambda x, mask: _eval_logits(graphdef, state, x, mask)


def transcribe(model: Wav2Vec2ForCTC, waveforms: Sequence[np.ndarray], vocabulary: Vocabulary,
               batch_size: int = 8, separator: str = "") -> list[str]:
    """Greedy transcripts of `waveforms` (float32 `[samples]`, normalised as in training); tokens
    joined by `separator` (" " for phones)."""
    return transcribe_waveforms(model_forward(model), waveforms, vocabulary, model.config,
                                batch_size=batch_size, num_frames=model.num_frames, separator=separator)


def error_rate_metrics(references: Sequence[str], hypotheses: Sequence[str], kind: str) -> dict[str, float]:
    """{"wer", "cer"} for letter labels or {"per"} for phones (references normalised as labels are)."""
    if kind == "phn":
        return {"per": error_rates.token_error_rate([r.split() for r in references],
                                                     [h.split() for h in hypotheses])}
    return {"wer": error_rates.word_error_rate(references, hypotheses),
            "cer": error_rates.char_error_rate(references, hypotheses)}


def load_labelled_waveforms(manifest_path: str, labels: LabelSet, *, normalize: bool) -> tuple[list[np.ndarray], list[str]]:
    """The usable rows of a labelled manifest: waveforms and references (normalised)."""
    manifest = load_manifest(manifest_path)
    waveforms, references = [], []
    for index in labels.usable_indices():
        waveforms.append(audio.load_audio(manifest.file_path(int(index)), normalize_audio=normalize))
        references.append(labels.reference(int(index)))
    return waveforms, references


class CTCEvaluator:
    """Validation of a fine-tuning run (an `Evaluator`: `evaluator(state, step) -> {name: value}`).

    Transcribes the valid manifest's usable rows with the state's parameters, returns the error
    rates, and writes the best model so far (lowest `best_metric`) to `WORKDIR/best/` with its
    vocabulary, and `WORKDIR/best.json` (also the history of evaluations).
    """

    def __init__(self, graphdef: nnx.GraphDef, config: Wav2Vec2Config, waveforms: Sequence[np.ndarray],
                 references: Sequence[str], vocabulary: Vocabulary, kind: str, *, batch_size: int,
                 workdir: pathlib.Path | None, best_metric: str, write: bool = True):
        if best_metric not in METRICS[kind]:
            raise ValueError(f"train.best_metric must be one of {METRICS[kind]} for {kind} labels, got {best_metric!r}")
        self._graphdef = graphdef
        self._config = config
        self._waveforms = list(waveforms)
        self._references = list(references)
        self._vocabulary = vocabulary
        self._kind = kind
        self._batch_size = batch_size
        self._workdir = workdir
        self._best_metric = best_metric
        self._write = write and workdir is not None
        self._num_frames = nnx.eval_shape(lambda: Wav2Vec2ForCTC(config)).num_frames

        def logits(params, model_state, x, mask):
            return nnx.merge(graphdef, params, model_state)(x, mask).logits

        self._logits = jax.jit(logits)

    def __call__(self, state: Any, step: int) -> dict[str, float]:
        forward = lambda x, mask: self._logits(state.params, state.model_state, x, mask)  # noqa: E731
        hypotheses = transcribe_waveforms(forward, self._waveforms, self._vocabulary, self._config,
                                          batch_size=self._batch_size, num_frames=self._num_frames, exact=False,
                                          separator=SEPARATORS[self._kind])
        values = error_rate_metrics(self._references, hypotheses, self._kind)
        if self._write:
            self._keep_best(state, step, values, hypotheses)
        return values

    def _keep_best(self, state: Any, step: int, values: dict[str, float], hypotheses: list[str]) -> None:
        path = self._workdir / BEST_FILE
        stored = json.loads(path.read_text()) if path.is_file() else {"history": []}
        # Evaluations after this step belong to an interrupted run that this one replays.
        history = [h for h in stored["history"] if h["step"] < step] + [{"step": step, **values}]
        best = min(history, key=lambda h: (h[self._best_metric], h["step"]))
        if best["step"] == step:
            model = nnx.merge(self._graphdef, jax.device_get(state.params), jax.device_get(state.model_state))
            convert.save_checkpoint(self._config, model, self._workdir / BEST_DIR, vocabulary=self._vocabulary)
            (self._workdir / BEST_DIR / "transcripts.txt").write_text(
                "".join(f"{h}\n" for h in hypotheses), encoding="utf-8")
            logger.info("best %s so far: %.4f at step %d, saved to %s", self._best_metric, values[self._best_metric],
                        step, self._workdir / BEST_DIR)
        record = {"step": best["step"], "metric": self._best_metric, "value": best[self._best_metric],
                  "history": history}
        path.write_text(json.dumps(record, indent=1) + "\n")


def load_ctc_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[Wav2Vec2ForCTC, Vocabulary, bool]:
    """A fine-tuned model, its vocabulary and whether its inputs are normalised (zero mean, unit variance).

    Args:
      path: a fine-tuning workdir (its best model by default, `step` for a checkpoint), our folder
        format or a transformers `Wav2Vec2ForCTC` folder with a vocab.json.
      step: a workdir checkpoint.
    """
    folder = pathlib.Path(path)
    model = load_model(folder, step)
    if not isinstance(model, Wav2Vec2ForCTC):
        raise ValueError(f"{folder} holds a {type(model).__name__}, not a fine-tuned (CTC) model")
    vocabulary = convert.load_vocabulary(folder)
    if vocabulary is None:
        raise ValueError(f"{folder} has no {VOCAB_FILE}: the CTC head's tokens are unknown")
    if len(vocabulary) != model.config.vocab_size:
        raise ValueError(f"{folder}: {VOCAB_FILE} has {len(vocabulary)} tokens, the model's head {model.config.vocab_size}")
    preprocessor = folder / "preprocessor_config.json"
    normalize = json.loads(preprocessor.read_text()).get("do_normalize", True) if preprocessor.is_file() else True
    return model, vocabulary, bool(normalize)


def read_inputs(paths: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    """Audio files to transcribe: each path is an audio file or a manifest (`.tsv`, all its rows)."""
    files = []
    for path in map(pathlib.Path, paths):
        if path.suffix == ".tsv":
            manifest = load_manifest(path)
            files += [manifest.file_path(i) for i in range(len(manifest))]
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such audio file or manifest")
    return files


def transcribe_files(checkpoint: str | os.PathLike, paths: Sequence[str | os.PathLike], *, step: int | None = None,
                     batch_size: int = 8, separator: str = "") -> list[tuple[pathlib.Path, str]]:
    """`(file, transcript)` for every audio file or manifest row in `paths` (`load_ctc_checkpoint`,
    `transcribe`; `separator` between tokens, " " for phones)."""
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint, step)
    files = read_inputs(paths)
    waveforms = [audio.load_audio(f, normalize_audio=normalize) for f in files]
    return list(zip(files, transcribe(model, waveforms, vocabulary, batch_size, separator)))


def evaluate_checkpoint(checkpoint: str | os.PathLike, manifest: str | os.PathLike, kind: str = "ltr", *,
                        step: int | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Error rates of a fine-tuned checkpoint on a labelled manifest (`transcribe`, exact batching).

    Returns {"wer", "cer"} (letters) or {"per"} (phones), plus "num_utterances" and the label skips.
    """
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint, step)
    labels = LabelSet(manifest, kind, vocabulary, model.num_frames)
    waveforms, references = load_labelled_waveforms(str(manifest), labels, normalize=normalize)
    hypotheses = transcribe(model, waveforms, vocabulary, batch_size, SEPARATORS[kind])
    return {**error_rate_metrics(references, hypotheses, kind), "num_utterances": len(waveforms),
            **{f"skipped_{k}": v for k, v in labels.skip_counts().items()}, "unknown_symbols": labels.num_unknown()}


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
    progress_metrics = {"loss": "loss", "valid_wer": "wer", "valid_cer": "cer", "valid_per": "per"}

    def __init__(self):
        self.vocabulary: Vocabulary | None = None
        self._model_config: Wav2Vec2Config | None = None
        self._encoder: nnx.State | None = None
        self._workdir: pathlib.Path | None = None
        self._primary = True

    def prepare(self, config, workdir, *, primary):
        data = config.data
        if data.labels not in METRICS:
            raise ValueError(f"data.labels must be one of {sorted(METRICS)}, got {data.labels!r}")
        if not data.pad:
            raise ValueError("data.pad must be True for fine-tuning: labelled audio is never cropped")
        if config.train.best_metric not in METRICS[data.labels]:
            raise ValueError(f"train.best_metric must be one of {METRICS[data.labels]} for {data.labels} labels, "
                             f"got {config.train.best_metric!r}")
        self._workdir, self._primary = workdir, primary
        stored = workdir / MODEL_CONFIG_FILE
        self.vocabulary = prepare_vocabulary(workdir, _train_manifest(config), data.labels, data.vocabulary,
                                             config.init)
        if stored.is_file():
            self._model_config = Wav2Vec2Config.from_json_file(stored)
            return
        init_config = None
        if config.init:
            init_config, self._encoder = load_encoder(config.init)
            logger.info("initialising the encoder from %s", config.init)
        self._model_config = finetuned_model_config(config.model, self.vocabulary, init_config)
        if primary:
            convert.save_processor_files(self.vocabulary, self._model_config, workdir, do_normalize=data.normalize)
            self._model_config.to_json_file(stored)

    def model_config(self, config):
        return self._model_config

    def optimizer_and_hyperparams(self, config):
        train = config.train
        optimizer = optim.make_optimizer(**dataclasses.asdict(optim.OptimizerSettings.from_train_config(train)))
        objective = CTCObjective(
            freeze_finetune_updates=train.freeze_finetune_updates,
            use_attention_mask=self._model_config.feat_extract_norm == "layer",
        )
        hparams = train_lib.StepHyperparams(
            learning_rate=optim.schedule_from_train_config(train),
            grad_accum_steps=train.grad_accum_steps,
            objective=objective,
        )
        return optimizer, hparams

    def initial_state(self, state):
        if self._encoder is None:
            return state
        params = with_encoder(state.params, self._encoder)
        return state.replace(params=jax.device_put(params, jax.tree.map(lambda x: x.sharding, state.params)))

    def _labels(self, manifest: str, config) -> LabelSet:
        num_frames = nnx.eval_shape(lambda: Wav2Vec2Model(self._model_config)).num_frames
        labels = LabelSet(manifest, config.data.labels, self.vocabulary, num_frames)
        logger.info("%s: %s", manifest, labels.summary())
        return labels

    def data_iterator(self, config, *, batch_size, shard_index, shard_count) -> TrainIterator:
        data = config.data
        manifest = _train_manifest(config)
        return make_train_iterator(
            manifest,
            batch_size=batch_size,
            seed=config.train.seed,
            max_sample_size=data.max_sample_size,
            min_sample_size=data.min_sample_size,
            pad=True,
            normalize=data.normalize,
            num_workers=data.num_workers,
            shard_index=shard_index,
            shard_count=shard_count,
            strict=data.strict,
            max_skip_fraction=data.max_skip_fraction,
            allow_outside_root=data.allow_outside_root,
            num_buckets=data.num_buckets,
            labels=self._labels(manifest, config),
        )

    def make_evaluator(self, config, graphdef, mesh, state_shardings) -> CTCEvaluator:
        del mesh, state_shardings  # evaluated on the default device, as `transcribe` runs
        manifest = config.data.valid_manifest or str(default_manifest("valid"))
        waveforms, references = load_labelled_waveforms(manifest, self._labels(manifest, config),
                                                         normalize=config.data.normalize)
        logger.info("validation: %d utterances from %s", len(waveforms), manifest)
        return CTCEvaluator(graphdef, self._model_config, waveforms, references, self.vocabulary,
                            config.data.labels, batch_size=config.train.eval_batch_size, workdir=self._workdir,
                            best_metric=config.train.best_metric, write=self._primary)

    def plot(self, records, workdir):
        panels = [(name, title) for name, title in PANELS
                  if any(r.get(name) is not None or r.get(f"valid_{name}") is not None for r in records)]
        metrics_lib.plot_loss_curve(records, workdir / metrics_lib.LOSS_CURVE_FILE, panels)


def _train_manifest(config: ml_collections.ConfigDict) -> str:
    return config.data.train_manifest or str(default_manifest("train"))
