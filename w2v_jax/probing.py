"""Evaluating a frozen model: its pretraining objective on held-out audio, and linear probes.

- `validation_metrics`: the contrastive task in evaluation mode (argmax codewords, no dropout) on
  a manifest: loss, contrastive accuracy, code perplexity, and the codebook-usage histogram
  `[G, V]` (how often each codeword is chosen over every frame).
- Linear probes of frozen features (wav2vec 2.0 reports phone recognition from its
  representations; a linear probe asks how linearly available the information is):
  frame-level phone classification from the corpus' phoneme alignments, and utterance-level
  language identification from mean-pooled features. Baselines: the same architecture with
  random weights, and log-mel filterbanks on the same frame grid (25 ms windows, 20 ms hop).

Features of utterances of many lengths would compile one forward pass per length; instead each
utterance is cropped to a multiple of `crop_multiple` samples (its tail, at most that long, is
dropped) and utterances of equal cropped length are batched, so there are a few compiles only and
no padding (padding changes a group-norm model's features).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import librosa
import ml_collections
import numpy as np
import optax
from flax import nnx

from w2v_jax import checkpointing, convert, sharding
from w2v_jax import train as train_lib
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.contrastive_loss import sample_negative_indices
from w2v_jax.data import SAMPLE_RATE, load_audio, load_manifest
from w2v_jax.masking import compute_mask_indices
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.quantization import code_perplexity

FeatureKind = Literal["conv", "context", "projected"]
FEATURE_KINDS: tuple[str, ...] = ("conv", "context", "projected")
# Frame grid of the standard conv stack: 400-sample receptive field, 320-sample hop.
FRAME_HOP = 320
FRAME_WINDOW = 400
PAUSE = "_"


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One utterance of a manifest with its metadata.

    Attributes:
      path: the path as written in the manifest (the metadata key).
      waveform: float32 `[samples]`, normalised as the training pipeline does, cropped.
      language: the metadata's language, or None.
      phonemes, phoneme_starts, phoneme_ends: alignment (sample spans at 16 kHz), or empty.
    """

    path: str
    waveform: np.ndarray
    language: str | None
    phonemes: tuple[str, ...]
    phoneme_starts: np.ndarray
    phoneme_ends: np.ndarray


def read_metadata(path: str | os.PathLike) -> dict[str, dict]:
    """A corpus' `metadata.jsonl` keyed by each record's manifest path."""
    records = {}
    for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["path"]] = record
    return records


def load_utterances(
    manifest: str | os.PathLike,
    metadata: Mapping[str, dict] | None = None,
    *,
    crop_multiple: int = 16_000,
    max_utterances: int | None = None,
) -> list[Utterance]:
    """Loads a manifest's audio (normalised like training) and joins its metadata.

    Args:
      manifest: a TSV manifest or a folder.
      metadata: `read_metadata`'s dict; None: `metadata.jsonl` beside the manifest if it exists.
      crop_multiple: each waveform is cropped to a multiple of this many samples (at least one).
      max_utterances: keep the first N (quick runs).

    Returns:
      the utterances, in manifest order; those shorter than `crop_multiple` are left out.
    """
    if crop_multiple < FRAME_WINDOW:
        raise ValueError(
            f"crop_multiple must be at least the {FRAME_WINDOW}-sample receptive field, got {crop_multiple}"
        )
    entries = load_manifest(manifest)
    if metadata is None:
        beside = pathlib.Path(manifest).parent / "metadata.jsonl"
        metadata = read_metadata(beside) if beside.is_file() else {}
    out = []
    for index in range(len(entries)):
        if max_utterances is not None and len(out) >= max_utterances:
            break
        path = entries.paths[index]
        waveform = load_audio(entries.file_path(index))
        keep = len(waveform) // crop_multiple * crop_multiple
        if keep == 0:
            continue
        record = metadata.get(path, {})
        out.append(
            Utterance(
                path=path,
                waveform=waveform[:keep],
                language=record.get("language"),
                phonemes=tuple(record.get("phonemes", ())),
                phoneme_starts=np.asarray(record.get("phoneme_starts", ()), np.int64),
                phoneme_ends=np.asarray(record.get("phoneme_ends", ()), np.int64),
            )
        )
    return out


def frame_phone_labels(
    phonemes: Sequence[str],
    starts: np.ndarray,
    ends: np.ndarray,
    num_frames: int,
    hop: int = FRAME_HOP,
    window: int = FRAME_WINDOW,
) -> list[str | None]:
    """The phoneme under the centre sample of each frame (None where no phoneme span covers it).

    Frame t covers samples [t * hop, t * hop + window); its label is the phoneme whose span
    [start, end) holds sample t * hop + window // 2.
    """
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    if not len(phonemes) == len(starts) == len(ends):
        raise ValueError(f"{len(phonemes)} phonemes but {len(starts)} starts and {len(ends)} ends")
    centres = np.arange(num_frames) * hop + window // 2
    # Spans are sorted and disjoint: the candidate is the last span starting at or before the centre.
    candidate = np.searchsorted(starts, centres, side="right") - 1
    labels: list[str | None] = []
    for centre, index in zip(centres.tolist(), candidate.tolist()):
        inside = index >= 0 and centre < ends[index]
        labels.append(phonemes[index] if inside else None)
    return labels


def _batches(waveforms: Sequence[np.ndarray], batch_size: int) -> list[tuple[list[int], np.ndarray]]:
    """Batches of equal-length waveforms, always `batch_size` rows (one compile per length).

    Returns (indices of the real rows, `[batch_size, samples]` array); a short last batch is
    filled with copies of its first row, whose results the callers drop.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[int, list[int]] = {}
    for index, waveform in enumerate(waveforms):
        groups.setdefault(len(waveform), []).append(index)
    out = []
    for indices in groups.values():
        for begin in range(0, len(indices), batch_size):
            chunk = indices[begin : begin + batch_size]
            rows = chunk + [chunk[0]] * (batch_size - len(chunk))
            out.append((chunk, np.stack([waveforms[i] for i in rows]).astype(np.float32)))
    return out


# Module-level nnx.jit: repeated calls on models of the same architecture reuse the compiled
# forward passes (one per input shape).
@functools.partial(nnx.jit, static_argnames=("kind",))
def _features(module: Wav2Vec2ForPreTraining, x: jax.Array, kind: str) -> jax.Array:
    if kind == "projected":
        return module(x).projected_states
    features = module.feature_extractor(x)
    if kind == "conv":
        return features
    hidden, _ = module.feature_projection(features)
    return module.encoder(hidden, None, deterministic=True)


@nnx.jit
def _objective(module: Wav2Vec2ForPreTraining, x: jax.Array, mask: jax.Array, negatives: jax.Array):
    """Evaluation-mode outputs and per-utterance codeword counts `[batch, G, V]` (every frame)."""
    flat = negatives + jnp.arange(x.shape[0], dtype=jnp.int32)[:, None, None] * mask.shape[1]
    out = module(x, mask_time_indices=mask, sampled_negative_indices=flat, deterministic=True)
    _, normed = module.feature_projection(module.feature_extractor(x))
    _, usage = module.quantizer(normed, deterministic=True)
    counts = jax.nn.one_hot(usage.indices, module.quantizer.num_vars, dtype=jnp.int32).sum(axis=1)
    return out, counts


@nnx.jit
def _representations(module: Wav2Vec2ForPreTraining, x: jax.Array) -> dict[str, jax.Array]:
    out = module(x)
    _, normed = module.feature_projection(module.feature_extractor(x))
    _, usage = module.quantizer(normed, deterministic=True)
    return {
        "z": module.feature_extractor(x),
        "q": out.projected_quantized_states,
        "c": out.projected_states,
        "codes": usage.indices,
    }


def representations(model: Wav2Vec2ForPreTraining, waveform: np.ndarray) -> dict[str, np.ndarray]:
    """What the model makes of one utterance, evaluation mode, nothing masked.

    Returns:
      {"z": `[frames, conv_dim]` feature-encoder latents, "q": `[frames, proj_dim]` quantized
      targets in the contrastive space, "c": `[frames, proj_dim]` context predictions in the same
      space, "codes": `[frames, G]` chosen codewords}.
    """
    x = np.asarray(waveform, np.float32)[None]
    model.feature_extractor.check_input(x)
    return {k: np.asarray(v)[0] for k, v in _representations(model, x).items()}


def model_features(
    model: Wav2Vec2ForPreTraining, waveforms: Sequence[np.ndarray], kind: FeatureKind = "context", batch_size: int = 8
) -> list[np.ndarray]:
    """Frozen features of each waveform, `[frames, dim]`, in evaluation mode, without masking.

    Args:
      model: any `Wav2Vec2ForPreTraining` (a checkpoint, or a random-init baseline).
      waveforms: float32 `[samples]` each; equal lengths are batched (see the module docstring).
      kind: "conv" (the feature encoder's z), "context" (the Transformer's output, before
        project_hid), "projected" (c, in the contrastive space).
      batch_size: utterances per forward pass.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
    out: list[np.ndarray | None] = [None] * len(waveforms)
    for chunk, batch in _batches(waveforms, batch_size):
        model.feature_extractor.check_input(batch)
        features = np.asarray(_features(model, batch, kind), np.float32)
        for row, i in enumerate(chunk):
            out[i] = features[row]
    return out


def log_mel_features(waveform: np.ndarray, num_mels: int = 80) -> np.ndarray:
    """Log-mel filterbanks `[frames, num_mels]` on the conv stack's frame grid.

    400-sample (25 ms) Hann windows every 320 samples (20 ms), no centring, so frame t covers
    the same samples as the model's frame t; log(mel + 1e-6).
    """
    if len(waveform) < FRAME_WINDOW:
        raise ValueError(f"log-mel features need at least {FRAME_WINDOW} samples, got {len(waveform)}")
    mel = librosa.feature.melspectrogram(
        y=np.asarray(waveform, np.float32),
        sr=SAMPLE_RATE,
        n_fft=FRAME_WINDOW,
        hop_length=FRAME_HOP,
        win_length=FRAME_WINDOW,
        n_mels=num_mels,
        center=False,
    )
    return np.log(mel.T + 1e-6).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """Multinomial logistic regression on standardised features.

    Attributes:
      mean, scale: `[dim]` standardisation of the training features.
      weights: `[dim, num_classes]`; bias: `[num_classes]`.
    """

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        """`[n, dim]` features -> `[n, num_classes]` logits."""
        return ((np.asarray(x, np.float32) - self.mean) / self.scale) @ self.weights + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(x), axis=-1)


def train_linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    *,
    steps: int = 300,
    learning_rate: float = 0.05,
    weight_decay: float = 1e-4,
) -> LinearProbe:
    """Fits a `LinearProbe` by full-batch Adam on the mean cross-entropy + L2 (a convex problem).

    Args:
      x: `[n, dim]` features; y: `[n]` int labels in [0, num_classes).
      num_classes: classes of the problem (unseen ones just never win).
      steps, learning_rate: Adam's iterations and step size.
      weight_decay: L2 coefficient on the weights (not the bias).
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be [n, dim] and y [n], got shapes {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("no training examples for the probe")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    standard = jnp.asarray((x - mean) / scale)
    labels = jnp.asarray(y, jnp.int32)
    optimizer = optax.adam(learning_rate)

    def objective(params):
        weights, bias = params
        logits = standard @ weights + bias
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce + weight_decay * jnp.sum(weights**2)

    @jax.jit
    def fit(params):
        def update(carry, _):
            params, opt_state = carry
            grads = jax.grad(objective)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(update, (params, optimizer.init(params)), None, length=steps)
        return params

    params = (jnp.zeros((x.shape[1], num_classes), jnp.float32), jnp.zeros((num_classes,), jnp.float32))
    weights, bias = fit(params)
    return LinearProbe(mean, scale, np.asarray(weights), np.asarray(bias))


def accuracy(probe: LinearProbe, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose predicted class is `y`."""
    return float(np.mean(probe.predict(x) == np.asarray(y)))


def phone_dataset(
    utterances: Sequence[Utterance], features: Sequence[np.ndarray], vocabulary: Mapping[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Frames with a phoneme label: `(x [n, dim], y [n], vocabulary)`.

    The vocabulary (phoneme -> class) is built from these utterances when not given (training
    split); frames of phonemes outside a given vocabulary are left out (test split).
    """
    rows, labels = [], []
    build = vocabulary is None
    vocabulary = {} if vocabulary is None else dict(vocabulary)
    for utterance, feats in zip(utterances, features):
        frame_labels = frame_phone_labels(
            utterance.phonemes, utterance.phoneme_starts, utterance.phoneme_ends, len(feats)
        )
        for frame, label in enumerate(frame_labels):
            if label is None:
                continue
            if label not in vocabulary:
                if not build:
                    continue
                vocabulary[label] = len(vocabulary)
            rows.append(feats[frame])
            labels.append(vocabulary[label])
    if not rows:
        raise ValueError("no aligned frames: the utterances have no phoneme alignments (metadata.jsonl)")
    return np.stack(rows), np.asarray(labels, np.int32), vocabulary


def language_dataset(
    utterances: Sequence[Utterance], features: Sequence[np.ndarray], vocabulary: Mapping[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Mean-pooled features per utterance with its language: `(x [n, dim], y [n], vocabulary)`."""
    build = vocabulary is None
    vocabulary = {} if vocabulary is None else dict(vocabulary)
    rows, labels = [], []
    for utterance, feats in zip(utterances, features):
        if utterance.language is None:
            continue
        if utterance.language not in vocabulary:
            if not build:
                continue
            vocabulary[utterance.language] = len(vocabulary)
        rows.append(feats.mean(axis=0))
        labels.append(vocabulary[utterance.language])
    if not rows:
        raise ValueError("no utterance has a language in the metadata")
    return np.stack(rows), np.asarray(labels, np.int32), vocabulary


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Accuracies of one feature set (test split), with the majority-class baselines."""

    name: str
    phone_accuracy: float
    phone_majority: float
    language_accuracy: float
    language_majority: float
    num_phone_frames: int
    num_phone_classes: int


def _majority(train_y: np.ndarray, test_y: np.ndarray) -> float:
    return float(np.mean(test_y == np.bincount(train_y).argmax()))


def probe_features(
    name: str,
    train: tuple[Sequence[Utterance], Sequence[np.ndarray]],
    test: tuple[Sequence[Utterance], Sequence[np.ndarray]],
    *,
    steps: int = 300,
) -> ProbeResult:
    """Phone and language probes trained on `train` (utterances, features) and scored on `test`."""
    x, y, phones = phone_dataset(*train)
    x_test, y_test, _ = phone_dataset(*test, vocabulary=phones)
    phone_probe = train_linear_probe(x, y, len(phones), steps=steps)
    lx, ly, languages = language_dataset(*train)
    lx_test, ly_test, _ = language_dataset(*test, vocabulary=languages)
    language_probe = train_linear_probe(lx, ly, len(languages), steps=steps)
    return ProbeResult(
        name=name,
        phone_accuracy=accuracy(phone_probe, x_test, y_test),
        phone_majority=_majority(y, y_test),
        language_accuracy=accuracy(language_probe, lx_test, ly_test),
        language_majority=_majority(ly, ly_test),
        num_phone_frames=len(y),
        num_phone_classes=len(phones),
    )


@dataclasses.dataclass(frozen=True)
class ValidationMetrics:
    """The pretraining objective on held-out audio, evaluation mode.

    Attributes:
      loss, contrastive_loss, diversity_loss, feature_penalty: per masked frame (sums over
        batches / masked frames; loss includes the weighted diversity loss and feature penalty).
      accuracy: contrastive accuracy over every masked frame.
      chance_accuracy: 1 / (1 + num_negatives).
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
    totals = dict(loss=0.0, contrastive_loss=0.0, diversity_loss=0.0, feature_penalty=0.0, correct=0.0, num_masked=0)
    usage = np.zeros((groups, num_vars), np.int64)
    perplexities, skipped, batch_index = [], 0, 0
    for chunk, x in _batches(waveforms, batch_size):
        batch_key = jax.random.fold_in(key, batch_index)
        batch_index += 1
        mask = np.array(
            compute_mask_indices(
                jax.random.fold_in(batch_key, 0),
                (batch_size, model.num_frames(x.shape[1])),
                config.mask_time_prob,
                config.mask_time_length,
                config.mask_time_min_masks,
            )
        )
        mask[len(chunk) :] = False  # filler rows
        too_few = mask[: len(chunk)].sum(axis=1) <= config.num_negatives
        skipped += int(too_few.sum())
        mask[: len(chunk)][too_few] = False
        negatives = sample_negative_indices(jax.random.fold_in(batch_key, 1), jnp.asarray(mask), config.num_negatives)
        out, counts = jax.device_get(_objective(model, x, mask, negatives))
        usage += counts[: len(chunk)].sum(axis=0)
        num_masked = int(out.num_masked)
        if num_masked == 0:
            continue
        for name in ("loss", "contrastive_loss", "diversity_loss", "feature_penalty"):
            totals[name] += float(getattr(out, name))
        totals["correct"] += float(out.accuracy) * num_masked
        totals["num_masked"] += num_masked
        perplexities.append(float(out.codevector_perplexity))
    masked = max(totals["num_masked"], 1)
    marginal = usage / np.maximum(usage.sum(axis=1, keepdims=True), 1)
    return ValidationMetrics(
        loss=totals["loss"] / masked,
        contrastive_loss=totals["contrastive_loss"] / masked,
        diversity_loss=totals["diversity_loss"] / masked,
        feature_penalty=totals["feature_penalty"] / masked,
        accuracy=totals["correct"] / masked,
        chance_accuracy=1.0 / (1 + config.num_negatives),
        batch_perplexity=float(np.mean(perplexities)) if perplexities else float("nan"),
        code_perplexity=float(code_perplexity(jnp.asarray(marginal, jnp.float32))),
        codebook_usage=usage,
        used_fraction=float(np.mean(usage > 0)),
        num_masked=int(totals["num_masked"]),
        skipped_utterances=skipped,
    )


def load_model(path: str | os.PathLike, step: int | None = None) -> Wav2Vec2ForPreTraining:
    """A model from any of our checkpoint formats.

    Args:
      path: a training workdir (`config.json` + orbax `checkpoints/`, from `experiments.pretrain`),
        our folder format (`config.json` + `params.safetensors`, `convert.save_checkpoint`), or a
        transformers folder (`config.json` + `model.safetensors` / `pytorch_model.bin`).
      step: the workdir checkpoint to load; default the newest.
    """
    folder = pathlib.Path(path)
    if (folder / "checkpoints").is_dir():
        return _load_workdir(folder, step)
    if step is not None:
        raise ValueError(f"step={step} only applies to a training workdir (with checkpoints/), not {folder}")
    if (folder / "params.safetensors").is_file():
        return convert.load_checkpoint(folder)[1]
    if (folder / "config.json").is_file():
        return convert.load_hf_checkpoint(folder)[1]
    raise ValueError(
        f"{folder} is not a checkpoint: expected a training workdir (checkpoints/), params.safetensors "
        "or a transformers folder (config.json + model.safetensors)"
    )


def _load_workdir(folder: pathlib.Path, step: int | None) -> Wav2Vec2ForPreTraining:
    """Restores the parameters of a training run's checkpoint (the optimizer state is read and dropped)."""
    config = ml_collections.ConfigDict(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    t = config.train
    model_config = Wav2Vec2Config(**config.model.to_dict())
    optimizer, _ = train_lib.optimizer_and_hyperparams(t)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    graphdef, abstract, shardings = train_lib.abstract_train_state(model_config, optimizer, mesh=mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    # Read-only: the run may be live, its in-flight save must not be cleaned up or its steps moved.
    checkpointer = checkpointing.Checkpointer(folder / "checkpoints", read_only=True)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise ValueError(f"{folder / 'checkpoints'} holds no complete checkpoint")
        if step is None:  # the newest intact one (a corrupt newer one is reported and skipped)
            _, restored, _ = checkpointer.restore_newest_intact(target, move_aside=False)
        elif step not in steps:
            raise ValueError(f"no checkpoint {step} in {folder / 'checkpoints'}; available: {sorted(steps)}")
        else:
            restored, _ = checkpointer.restore(step, target)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, restored.params, restored.model_state)


def probe_table(results: Sequence[ProbeResult]) -> str:
    """A markdown table of probe accuracies (test split), majority-class baselines in the last row."""
    lines = [
        "| features | phone accuracy (frames) | language accuracy (utterances) |",
        "|---|---|---|",
    ]
    lines += [f"| {r.name} | {r.phone_accuracy:.3f} | {r.language_accuracy:.3f} |" for r in results]
    if results:
        lines.append(f"| majority class | {results[0].phone_majority:.3f} | {results[0].language_majority:.3f} |")
    return "\n".join(lines)


def evaluate(
    model: Wav2Vec2ForPreTraining,
    train_utterances: Sequence[Utterance],
    test_utterances: Sequence[Utterance],
    *,
    name: str = "checkpoint",
    kind: FeatureKind = "context",
    baselines: bool = True,
    seed: int = 0,
    probe_steps: int = 300,
) -> tuple[ValidationMetrics, list[ProbeResult]]:
    """The pretraining objective on `test_utterances`, then linear probes of the model's features.

    Args:
      model: the model to evaluate.
      train_utterances, test_utterances: probe training / test sets (`load_utterances`).
      name: the model's row label in the probe table.
      kind: which features are probed (`model_features`).
      baselines: also probe the same architecture with random weights (`seed`) and log-mel features.
      seed: masks and distractors of the objective, and the random-init baseline's weights.
      probe_steps: Adam iterations of each probe.

    Returns:
      (validation metrics, probe results: the model first, then the baselines).
    """
    test_waveforms = [u.waveform for u in test_utterances]
    train_waveforms = [u.waveform for u in train_utterances]
    metrics = validation_metrics(model, test_waveforms, seed=seed)
    candidates = [(f"{name} ({kind})", model)]
    if baselines:
        random_init = Wav2Vec2ForPreTraining(model.config, rngs=nnx.Rngs(seed))
        candidates.append((f"random init ({kind})", random_init))
    results = []
    for label, candidate in candidates:
        train = (train_utterances, model_features(candidate, train_waveforms, kind))
        test = (test_utterances, model_features(candidate, test_waveforms, kind))
        results.append(probe_features(label, train, test, steps=probe_steps))
    if baselines:
        train = (train_utterances, [log_mel_features(w) for w in train_waveforms])
        test = (test_utterances, [log_mel_features(w) for w in test_waveforms])
        results.append(probe_features("log-mel (80)", train, test, steps=probe_steps))
    return metrics, results
