"""Linear probes of a frozen model's features, and the evaluation that reports them.

wav2vec 2.0 reports phone recognition from its representations; a linear probe asks how linearly
available the information is: frame-level phone classification from the corpus' phoneme
alignments (`data.utterances`), and utterance-level language identification from mean-pooled
features. Baselines: the same architecture with random weights, and log-mel filterbanks on the
same frame grid (25 ms windows, 20 ms hop). `evaluate` adds the validation objective
(`research.validation`); `evaluate_checkpoint` is `python -m experiments.evaluate`.

Features of utterances of many lengths would compile one forward pass per length; instead each
utterance is cropped to a multiple of `crop_multiple` samples (`load_utterances`) and utterances
of equal cropped length are batched, so there are a few compiles only and no padding (padding
changes a group-norm model's features).
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
import numpy as np
import optax
from flax import nnx

from w2v_jax.checkpointing import load_model
from w2v_jax.data import SAMPLE_RATE, default_manifest
from w2v_jax.data.utterances import (
    FRAME_HOP,
    FRAME_WINDOW,
    Utterance,
    equal_length_batches,
    frame_phone_labels,
    load_utterances,
    read_metadata,
)
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.research import plotting
from w2v_jax.research.validation import ValidationMetrics, validation_metrics

FeatureKind = Literal["conv", "context", "projected"]
FEATURE_KINDS: tuple[str, ...] = ("conv", "context", "projected")


# Module-level nnx.jit: repeated calls on models of the same architecture reuse the compiled
# forward passes (one per input shape).
@functools.partial(nnx.jit, static_argnames=("kind",))
def _features(module: Wav2Vec2ForPreTraining, x: jax.Array, kind: str) -> jax.Array:
    out = module(x)
    if kind == "projected":
        return out.projected_states
    if kind == "conv":
        return out.extract_features
    return out.last_hidden_state


@nnx.jit
def _representations(module: Wav2Vec2ForPreTraining, x: jax.Array) -> dict[str, jax.Array]:
    out = module(x)
    return {
        "z": out.extract_features,
        "q": out.projected_quantized_states,
        "c": out.projected_states,
        "codes": out.codevector_indices,
    }


def representations(model: Wav2Vec2ForPreTraining, waveform: np.ndarray) -> dict[str, np.ndarray]:
    """What the model makes of one utterance, evaluation mode, nothing masked.

    Returns:
      {"z": `[frames, conv_dim]` feature-encoder latents (layer-normalised, `extract_features`), "q": `[frames, proj_dim]` quantized
      targets in the contrastive space, "c": `[frames, proj_dim]` context predictions in the same
      space, "codes": `[frames, G]` chosen codewords}.
    """
    x = np.asarray(waveform, np.float32)[None]
    model.wav2vec2.feature_extractor.check_input(x)
    return {k: np.asarray(v)[0] for k, v in _representations(model, x).items()}


def model_features(
    model: Wav2Vec2ForPreTraining, waveforms: Sequence[np.ndarray], kind: FeatureKind = "context", batch_size: int = 8
) -> list[np.ndarray]:
    """Frozen features of each waveform, `[frames, dim]`, in evaluation mode, without masking.

    Args:
      model: any `Wav2Vec2ForPreTraining` (a checkpoint, or a random-init baseline).
      waveforms: float32 `[samples]` each; equal lengths are batched (see the module docstring).
      kind: "conv" (the feature encoder's z after its LayerNorm, `extract_features`), "context" (the Transformer's output, before
        project_hid), "projected" (c, in the contrastive space).
      batch_size: utterances per forward pass.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
    out: list[np.ndarray | None] = [None] * len(waveforms)
    for chunk, batch in equal_length_batches(waveforms, batch_size):
        model.wav2vec2.feature_extractor.check_input(batch)
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


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    step: int | None = None,
    manifest: str | os.PathLike | None = None,
    probe_train_manifest: str | os.PathLike | None = None,
    metadata: str | os.PathLike | None = None,
    kind: FeatureKind = "context",
    baselines: bool = True,
    seed: int = 0,
    max_utterances: int | None = None,
) -> tuple[dict, str, pathlib.Path]:
    """`evaluate` on a checkpoint; writes `metrics.json`, `probes.md` and `codebook_usage.png`.

    Args:
      checkpoint: anything `checkpointing.load_model` reads; `step` picks a workdir's checkpoint.
      output: the folder to write (default CHECKPOINT/eval).
      manifest: objective and probe test set (default: the embedded corpus' valid split).
      probe_train_manifest: probe training set (default: the embedded corpus' train split).
      metadata: `metadata.jsonl` with the alignments (default: beside each manifest).
      kind, baselines, seed: as `evaluate`.
      max_utterances: use the first N utterances of each split.

    Returns:
      (the `metrics.json` record, the markdown probe table, the output folder).
    """
    output = pathlib.Path(output or pathlib.Path(checkpoint) / "eval")
    output.mkdir(parents=True, exist_ok=True)
    records = read_metadata(metadata) if metadata else None
    model = load_model(checkpoint, step)
    train = load_utterances(probe_train_manifest or default_manifest("train"), records, max_utterances=max_utterances)
    test = load_utterances(manifest or default_manifest("valid"), records, max_utterances=max_utterances)
    metrics, probes = evaluate(
        model, train, test, name=pathlib.Path(checkpoint).name, kind=kind, baselines=baselines, seed=seed
    )
    table = probe_table(probes)
    record = {
        "checkpoint": str(checkpoint),
        "validation": {k: v for k, v in dataclasses.asdict(metrics).items() if k != "codebook_usage"},
        "codebook_usage": metrics.codebook_usage.tolist(),
        "probes": [dataclasses.asdict(p) for p in probes],
    }
    (output / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    (output / "probes.md").write_text(table + "\n")
    plotting.plot_codebook_usage(metrics.codebook_usage, output / "codebook_usage.png")
    return record, table, output
