"""Linear probes of a frozen model's features, and the evaluation that reports them.

wav2vec 2.0 reports phone recognition from its representations; a linear frame phone probe asks
how linearly available phones are in each layer: multinomial logistic regression from one frame's
features to the phoneme under the frame's centre sample (the corpus' espeak-ng alignments,
`data.utterances`). Which layer holds phones best is a measurement, not a given (it is rarely the
last one), so every layer is probed: the feature encoder's output (`extract_features`), the
Transformer's input and each Transformer layer's output (`Wav2Vec2ForPreTraining.features` with
`output_hidden_states=True`). Baselines: the same architecture at random init, and 80 log-mel
filterbanks on the same frame grid (25 ms windows, 20 ms hop).

The held-out-voice protocol (`HeldOutVoices`): the embedded corpus' voices are espeak-ng's
`language+variant` (e.g. "fr+m3"), and a variant (m1..m7, f1..f5, klatt, klatt2) is the same
synthetic speaker in every language (`Utterance.speaker`). A few speakers are held out; the probe
trains on the train split's utterances of the other ("seen") voices and is scored on
- unseen voices: every utterance, train and valid split, of the held-out voices;
- held-out sentences: the valid split's utterances of the seen voices (sentences never trained on).
A probe that leans on what it memorised of the training voices fails the first test; one that
leans on the training sentences fails the second.

`evaluate` adds the validation objective (`research.validation`); `evaluate_pretrained_checkpoint`
is `w2v-evaluate` on a pretrained checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import optax
from flax import nnx

from w2v_jax.checkpoints.loading import load_model
from w2v_jax.data import default_manifest
from w2v_jax.data.audio import RECEPTIVE_FIELD, SAMPLE_RATE
from w2v_jax.data.utterances import (
    FRAME_HOP,
    Utterance,
    frame_phone_labels,
    load_utterances,
    read_metadata,
)
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.research import plotting
from w2v_jax.research.validation import ValidationMetrics, validation_metrics

FeatureKind = Literal["layers", "conv", "context", "projected"]
FEATURE_KINDS: tuple[str, ...] = ("layers", "conv", "context", "projected")
# One female and one male variant, each speaking all five languages of the embedded corpus: thousands
# of aligned frames for the unseen-voice test while the probe keeps most utterances to train on.
DEFAULT_HELD_OUT_VOICES: tuple[str, ...] = ("f4", "m2")
RANDOM_INIT = "random init"
LOG_MEL = "log-mel (80)"
# The probe's test sets, as `ProbeSets` and `LayerProbeResult` name them.
TEST_SETS: tuple[str, ...] = ("unseen_voice", "held_out_sentences")


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
      {"z": `[frames, conv_dim]` feature-encoder latents (layer-normalised, `extract_features`), "q": `[frames,
      proj_dim]` quantized targets in the contrastive space, "c": `[frames, proj_dim]` context predictions in the same
      space, "codes": `[frames, G]` chosen codewords}.
    """
    x = np.asarray(waveform, np.float32)[None]
    model.wav2vec2.feature_extractor.check_input(x)
    return {k: np.asarray(v)[0] for k, v in _representations(model, jnp.asarray(x)).items()}


def model_features(
    model: Wav2Vec2ForPreTraining, waveforms: Sequence[np.ndarray], kind: FeatureKind = "layers", batch_size: int = 8
) -> dict[str, list[np.ndarray]]:
    """Frozen features of each waveform (evaluation mode, nothing masked), per feature set.

    Args:
      model: any `Wav2Vec2ForPreTraining` (a checkpoint, or a random-init baseline).
      waveforms: float32 `[samples]` each (run by `Wav2Vec2ForPreTraining.features`: group-norm
        models one utterance at a time, layer-norm models batched with padding; exact either way).
      kind: "layers": every layer, `{"conv", "layer 0", ..., "layer L"}`: the feature encoder's
        output after its LayerNorm (`extract_features`), the Transformer's input (after the
        positional conv) and each of its L layers' outputs (the model's `hidden_states`; in pre-LN
        models the last one comes before the final LayerNorm). Or one set: "conv", "context" (the
        context network's output, `last_hidden_state`) or "projected" (c, in the contrastive space).
      batch_size: rows per forward pass.

    Returns:
      {feature set: one `[frames, dim]` float32 array per waveform}, in depth order.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {FEATURE_KINDS}")
    features = model.features(waveforms, output_hidden_states=kind == "layers", batch_size=batch_size)
    if kind == "context":
        return {"context": [f.last_hidden_state for f in features]}
    if kind == "projected":
        return {"projected": [np.asarray(model.project_hid(jnp.asarray(f.last_hidden_state))) for f in features]}
    out = {"conv": [f.extract_features for f in features]}
    if kind == "layers":
        num_layers = model.config.num_hidden_layers + 1
        stacks: list[tuple[np.ndarray, ...]] = []
        for f in features:
            assert f.hidden_states is not None  # asked for: output_hidden_states
            stacks.append(f.hidden_states)
        out |= {f"layer {i}": [stack[i] for stack in stacks] for i in range(num_layers)}
    return out


def log_mel_features(waveform: np.ndarray, num_mels: int = 80) -> np.ndarray:
    """Log-mel filterbanks `[frames, num_mels]` on the conv stack's frame grid.

    400-sample (25 ms) Hann windows every 320 samples (20 ms), no centring, so frame t covers
    the same samples as the model's frame t; log(mel + 1e-6).
    """
    if len(waveform) < RECEPTIVE_FIELD:
        raise ValueError(f"log-mel features need at least {RECEPTIVE_FIELD} samples, got {len(waveform)}")
    mel = librosa.feature.melspectrogram(
        y=np.asarray(waveform, np.float32),
        sr=SAMPLE_RATE,
        n_fft=RECEPTIVE_FIELD,
        hop_length=FRAME_HOP,
        win_length=RECEPTIVE_FIELD,
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


# Module-level jit with the data as arguments: probes of equal shapes (a model's layers, a sweep's
# runs) share one compile.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _fit_linear_probe(
    standard: jax.Array, labels: jax.Array, num_classes: int, steps: int, learning_rate: float, weight_decay: float
) -> tuple[jax.Array, jax.Array]:
    """Full-batch Adam from zeros: `[n, dim]` standardised features, `[n]` labels -> (weights, bias)."""
    optimizer = optax.adam(learning_rate)

    def objective(params):
        weights, bias = params
        logits = standard @ weights + bias
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce + weight_decay * jnp.sum(weights**2)

    def update(carry, _):
        params, opt_state = carry
        grads = jax.grad(objective)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    params = (jnp.zeros((standard.shape[1], num_classes), jnp.float32), jnp.zeros((num_classes,), jnp.float32))
    (params, _), _ = jax.lax.scan(update, (params, optimizer.init(params)), None, length=steps)
    return params


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
    weights, bias = _fit_linear_probe(
        jnp.asarray((x - mean) / scale), jnp.asarray(y, jnp.int32), num_classes, steps, learning_rate, weight_decay
    )
    return LinearProbe(mean, scale, np.asarray(weights), np.asarray(bias))


def accuracy(probe: LinearProbe, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose predicted class is `y`."""
    return float(np.mean(probe.predict(x) == np.asarray(y)))


def phone_labels(
    utterances: Sequence[Utterance], num_frames: Sequence[int], vocabulary: Mapping[str, int] | None = None
) -> tuple[list[np.ndarray], dict[str, int]]:
    """Each utterance's frame classes on the conv stack's frame grid (`frame_phone_labels`).

    Args:
      utterances: with phoneme alignments.
      num_frames: frames of each utterance's features.
      vocabulary: phoneme -> class; None: built from these utterances in order of first appearance
        (the training set).

    Returns:
      (one `[frames]` int32 array per utterance, -1 where no phoneme covers the frame's centre or,
      with a given vocabulary, where its phoneme is outside it; the vocabulary).
    """
    build = vocabulary is None
    vocabulary = {} if vocabulary is None else dict(vocabulary)
    out = []
    for utterance, frames in zip(utterances, num_frames, strict=True):
        names = frame_phone_labels(utterance.phonemes, utterance.phoneme_starts, utterance.phoneme_ends, frames)
        for name in names:
            if build and name is not None and name not in vocabulary:
                vocabulary[name] = len(vocabulary)
        out.append(np.asarray([-1 if name is None else vocabulary.get(name, -1) for name in names], np.int32))
    return out, vocabulary


def phone_dataset(
    utterances: Sequence[Utterance], features: Sequence[np.ndarray], vocabulary: Mapping[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Frames with a phoneme label: `(x [n, dim], y [n], vocabulary)` (`phone_labels`'s arguments).

    The vocabulary is built from these utterances when not given (training set); frames of phonemes
    outside a given vocabulary are left out (test sets).
    """
    labels, vocabulary = phone_labels(utterances, [len(f) for f in features], vocabulary)
    if not any(np.any(y >= 0) for y in labels):
        raise ValueError("no aligned frames: the utterances have no phoneme alignments (metadata.jsonl)")
    x = np.concatenate([np.asarray(f, np.float32)[y >= 0] for f, y in zip(features, labels)])
    y = np.concatenate([y[y >= 0] for y in labels])
    return x, y, vocabulary


@dataclasses.dataclass(frozen=True)
class ProbeSets:
    """The phone probe's utterances (`HeldOutVoices.split`).

    Attributes:
      train: the probe's training set, the train split's utterances of the seen voices.
      unseen_voice: every utterance of the held-out voices (empty when none is held out).
      held_out_sentences: the valid split's utterances of the seen voices.
      held_out_voices: the held-out speakers.
    """

    train: tuple[Utterance, ...]
    unseen_voice: tuple[Utterance, ...]
    held_out_sentences: tuple[Utterance, ...]
    held_out_voices: tuple[str, ...]

    def fingerprint(self) -> str:
        """A short hash of the held-out voices and each set's utterance paths (a cache key)."""
        parts = [",".join(self.held_out_voices)]
        parts += [",".join(u.path for u in getattr(self, name)) for name in ("train", *TEST_SETS)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class HeldOutVoices:
    """The phone probe's held-out-voice protocol (module docstring).

    Attributes:
      voices: the held-out speakers (`Utterance.speaker`); default `DEFAULT_HELD_OUT_VOICES`. Empty:
        no unseen-voice test (corpora without voices in their metadata).
    """

    voices: tuple[str, ...] = DEFAULT_HELD_OUT_VOICES

    def split(
        self,
        train_split: Sequence[Utterance],
        valid_split: Sequence[Utterance],
        *,
        max_utterances: int | None = None,
    ) -> ProbeSets:
        """The probe's sets from a corpus' train and valid splits (`load_utterances`).

        Utterances without a voice count as seen. `max_utterances` keeps the first N of each set
        (quick runs). ValueError when a held-out voice set is asked for but no utterance has one of
        its voices, or when a set the probe needs is empty.
        """
        held_out = set(self.voices)
        unseen = [u for u in [*train_split, *valid_split] if u.speaker in held_out]
        train = [u for u in train_split if u.speaker not in held_out]
        sentences = [u for u in valid_split if u.speaker not in held_out]
        if held_out and not unseen:
            found = sorted({u.speaker for u in [*train_split, *valid_split] if u.speaker is not None})
            raise ValueError(
                f"no utterance of the held-out voices {', '.join(self.voices)} (voices in the data: "
                f"{', '.join(found) or 'none'}); hold out others, or none"
            )
        if not train:
            raise ValueError("no train-split utterance of a seen voice for the phone probe to train on")
        if not sentences:
            raise ValueError("no valid-split utterance of a seen voice to test the phone probe on held-out sentences")
        keep = slice(max_utterances)
        return ProbeSets(tuple(train[keep]), tuple(unseen[keep]), tuple(sentences[keep]), tuple(self.voices))


@dataclasses.dataclass(frozen=True)
class LayerProbeResult:
    """The phone probe's accuracy on one feature set.

    Attributes:
      features: whose features: the model's name, "random init" or "log-mel (80)".
      layer: the feature set (`model_features`' names; "" for log-mel).
      unseen_voice: accuracy on the held-out voices' frames (NaN when none is held out).
      held_out_sentences: accuracy on the seen voices' valid-split frames.
    """

    features: str
    layer: str
    unseen_voice: float
    held_out_sentences: float


def _nan_for_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `_json_ready` on one flat record: JSON's nulls back to NaN."""
    return {k: (math.nan if v is None else v) for k, v in values.items()}


@dataclasses.dataclass(frozen=True)
class PhoneProbeReport:
    """The phone probe of every feature set on one `ProbeSets`.

    Attributes:
      results: the model's feature sets in depth order, then random init's, then log-mel's.
      majority: {test set: accuracy of always answering the training set's most frequent phone}.
      num_frames: {"train" and each test set: aligned frames scored}.
      num_classes: phones of the training set.
      held_out_voices: the protocol's held-out speakers.
    """

    results: tuple[LayerProbeResult, ...]
    majority: dict[str, float]
    num_frames: dict[str, int]
    num_classes: int
    held_out_voices: tuple[str, ...]

    @property
    def main_test_set(self) -> str:
        """The test set layers are ranked by: unseen voices, or held-out sentences when none is held out."""
        return "unseen_voice" if self.held_out_voices else "held_out_sentences"

    def feature_names(self) -> list[str]:
        """Whose features were probed (the model, its baselines), in the results' order."""
        return list(dict.fromkeys(r.features for r in self.results))

    def rows(self, features: str) -> list[LayerProbeResult]:
        """The results of one model (or baseline), in depth order."""
        return [r for r in self.results if r.features == features]

    def best(self, features: str) -> LayerProbeResult:
        """The feature set of `features` with the highest accuracy on `main_test_set` (the shallower on ties)."""
        rows = self.rows(features)
        if not rows:
            raise ValueError(f"no probe results for {features!r}; have {self.feature_names()}")
        return max(rows, key=lambda r: (getattr(r, self.main_test_set), -rows.index(r)))

    def table(self) -> str:
        """Markdown: a row per feature set, a column per test set, each model's best layer in bold."""
        voices = ", ".join(self.held_out_voices) or "none held out"
        lines = [
            f"| features | layer | unseen voices ({voices}) | held-out sentences (seen voices) |",
            "|---|---|---|---|",
        ]
        best = [self.best(name) for name in self.feature_names()]
        for r in self.results:
            cells = [_fraction(r.unseen_voice), _fraction(r.held_out_sentences)]
            if r in best:
                column = TEST_SETS.index(self.main_test_set)
                cells[column] = f"**{cells[column]}**"
            lines.append(f"| {r.features} | {r.layer} | {' | '.join(cells)} |")
        lines.append(
            f"| majority class | | {_fraction(self.majority['unseen_voice'])} | "
            f"{_fraction(self.majority['held_out_sentences'])} |"
        )
        n = self.num_frames
        lines += [
            "",
            f"Linear frame phone probe ({self.num_classes} phones), trained on {n['train']} frames of the train "
            f"split's seen voices; scored on {n['unseen_voice']} frames of the unseen voices (both splits) and "
            f"{n['held_out_sentences']} frames of the seen voices' valid split. Bold: each model's best layer "
            f"on the {self.main_test_set.replace('_', ' ')} test.",
            "",
            "Best layer for phones: "
            + "; ".join(
                f"{r.features}: {f'{r.layer}, ' if r.layer else ''}{getattr(r, self.main_test_set):.3f}" for r in best
            )
            + ".",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None), with each model's best layer under "best"."""
        record = _json_ready(dataclasses.asdict(self))
        record["best"] = {name: _json_ready(dataclasses.asdict(self.best(name))) for name in self.feature_names()}
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> PhoneProbeReport:
        """The inverse of `to_dict`."""
        results = tuple(LayerProbeResult(**_nan_for_none(r)) for r in record["results"])
        return cls(
            results=results,
            majority={k: (math.nan if v is None else v) for k, v in record["majority"].items()},
            num_frames=dict(record["num_frames"]),
            num_classes=int(record["num_classes"]),
            held_out_voices=tuple(record["held_out_voices"]),
        )


def _fraction(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _majority(train_y: np.ndarray, test_y: np.ndarray) -> float:
    return float(np.mean(test_y == np.bincount(train_y).argmax()))


def probe_feature_sets(
    sets: ProbeSets, feature_sets: Iterable[tuple[str, str, Sequence[np.ndarray]]], *, steps: int = 300
) -> PhoneProbeReport:
    """Trains and scores the phone probe on each feature set.

    Args:
      sets: the probe's utterances (`HeldOutVoices.split`).
      feature_sets: (whose features, layer, one `[frames, dim]` array per utterance of
        `sets.train`, then `sets.unseen_voice`, then `sets.held_out_sentences`) each; an iterator
        can make them one at a time.
      steps: Adam iterations of each probe (`train_linear_probe`).

    Returns:
      the report; frames whose phoneme the training set lacks are not scored.
    """
    groups = {"train": sets.train, "unseen_voice": sets.unseen_voice, "held_out_sentences": sets.held_out_sentences}
    ends = np.cumsum([len(group) for group in groups.values()]).tolist()
    starts = [0, *ends[:-1]]
    results, majority, frames, num_classes = [], {}, {}, 0
    for whose, layer, features in feature_sets:
        if len(features) != ends[-1]:
            raise ValueError(f"{whose} {layer}: {len(features)} feature arrays for {ends[-1]} utterances")
        parts = {group: features[a:b] for group, a, b in zip(groups, starts, ends)}
        x, y, vocabulary = phone_dataset(sets.train, parts["train"])
        linear_probe = train_linear_probe(x, y, len(vocabulary), steps=steps)
        # Frames, classes and the majority baseline are the same for every feature set on the conv
        # stack's frame grid (log-mel's too); the report keeps the last set's.
        num_classes, frames = len(vocabulary), {"train": len(y), **dict.fromkeys(TEST_SETS, 0)}
        scores, majority = dict.fromkeys(TEST_SETS, math.nan), dict.fromkeys(TEST_SETS, math.nan)
        for test in TEST_SETS:
            if groups[test]:
                x_test, y_test, _ = phone_dataset(groups[test], parts[test], vocabulary)
                scores[test] = accuracy(linear_probe, x_test, y_test)
                majority[test] = _majority(y, y_test)
                frames[test] = len(y_test)
        results.append(LayerProbeResult(whose, layer, scores["unseen_voice"], scores["held_out_sentences"]))
    if not results:
        raise ValueError("no feature sets to probe")
    return PhoneProbeReport(tuple(results), majority, frames, num_classes, sets.held_out_voices)


def phone_probe(
    model: Wav2Vec2ForPreTraining,
    sets: ProbeSets,
    *,
    name: str = "checkpoint",
    kind: FeatureKind = "layers",
    baselines: bool = True,
    seed: int = 0,
    steps: int = 300,
) -> PhoneProbeReport:
    """The held-out-voice phone probe (module docstring) of each of the model's feature sets.

    Args:
      model: the model whose frozen features are probed.
      sets: the probe's utterances (`HeldOutVoices.split`).
      name: the model's name in the report.
      kind: which feature sets (`model_features`; default every layer).
      baselines: also probe the same architecture at random init (weights from `seed`) and log-mel.
      seed: the random-init baseline's weights.
      steps: Adam iterations of each probe (`train_linear_probe`).

    Returns:
      `probe_feature_sets`' report: the model's feature sets in depth order, then random init's,
      then log-mel's.
    """
    waveforms = [u.waveform for u in (*sets.train, *sets.unseen_voice, *sets.held_out_sentences)]
    candidates = [(name, model)]
    if baselines:
        candidates.append((RANDOM_INIT, Wav2Vec2ForPreTraining(model.config, rngs=nnx.Rngs(seed))))

    def feature_sets() -> Iterator[tuple[str, str, Sequence[np.ndarray]]]:
        for whose, candidate in candidates:  # one model's features in memory at a time
            for layer, features in model_features(candidate, waveforms, kind).items():
                yield whose, layer, features
        if baselines:
            yield LOG_MEL, "", [log_mel_features(w) for w in waveforms]

    return probe_feature_sets(sets, feature_sets(), steps=steps)


def evaluate(
    model: Wav2Vec2ForPreTraining,
    train_utterances: Sequence[Utterance],
    valid_utterances: Sequence[Utterance],
    *,
    name: str = "checkpoint",
    kind: FeatureKind = "layers",
    baselines: bool = True,
    seed: int = 0,
    probe_steps: int = 300,
    protocol: HeldOutVoices = HeldOutVoices(),
    max_utterances: int | None = None,
) -> tuple[ValidationMetrics, PhoneProbeReport]:
    """The pretraining objective on the valid split, then the held-out-voice phone probe.

    Args:
      model: the model to evaluate.
      train_utterances, valid_utterances: a corpus' train and valid splits (`load_utterances`),
        which `protocol` splits into the probe's sets.
      name: the model's name in the report.
      kind, baselines, probe_steps: as `phone_probe`'s `kind`, `baselines`, `steps`.
      seed: masks and distractors of the objective, and the random-init baseline's weights.
      protocol: which voices are held out.
      max_utterances: at most this many utterances in the objective's set and in each probe set.

    Returns:
      (validation metrics, phone probe report).
    """
    sets = protocol.split(train_utterances, valid_utterances, max_utterances=max_utterances)
    metrics = validation_metrics(model, [u.waveform for u in valid_utterances[:max_utterances]], seed=seed)
    report = phone_probe(model, sets, name=name, kind=kind, baselines=baselines, seed=seed, steps=probe_steps)
    return metrics, report


def evaluate_pretrained_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    step: int | None = None,
    manifest: str | os.PathLike | None = None,
    probe_train_manifest: str | os.PathLike | None = None,
    metadata: str | os.PathLike | None = None,
    kind: FeatureKind = "layers",
    baselines: bool = True,
    seed: int = 0,
    max_utterances: int | None = None,
    held_out_voices: Sequence[str] = DEFAULT_HELD_OUT_VOICES,
    probe_steps: int = 300,
) -> tuple[dict, str, pathlib.Path]:
    """`evaluate` on a checkpoint; writes `metrics.json`, `probes.md`, `phone_probe.png` and `codebook_usage.png`.

    Args:
      checkpoint: anything `checkpoints.load_model` reads; `step` picks a workdir's checkpoint.
      output: the folder to write (default CHECKPOINT/eval).
      manifest: the valid split: the objective's set, and the probe's held-out sentences (default:
        the embedded corpus' valid split).
      probe_train_manifest: the train split, the probe's training set (default: the embedded
        corpus' train split).
      metadata: `metadata.jsonl` with alignments and voices (default: beside each manifest).
      kind, baselines, seed, max_utterances, probe_steps: as `evaluate`'s.
      held_out_voices: the speakers held out of the probe's training set (empty: none).

    Returns:
      (the `metrics.json` record, the markdown probe table, the output folder).
    """
    output = pathlib.Path(output or pathlib.Path(checkpoint) / "eval")
    output.mkdir(parents=True, exist_ok=True)
    records = read_metadata(metadata) if metadata else None
    model = load_model(checkpoint, step)
    if not isinstance(model, Wav2Vec2ForPreTraining):
        raise ValueError(
            f"{checkpoint} holds a {type(model).__name__}: the validation objective and the codebook need a "
            "pretraining model (Wav2Vec2ForPreTraining)"
        )
    train = load_utterances(probe_train_manifest or default_manifest("train"), records)
    valid = load_utterances(manifest or default_manifest("valid"), records)
    metrics, report = evaluate(
        model,
        train,
        valid,
        name=pathlib.Path(checkpoint).name,
        kind=kind,
        baselines=baselines,
        seed=seed,
        probe_steps=probe_steps,
        protocol=HeldOutVoices(tuple(held_out_voices)),
        max_utterances=max_utterances,
    )
    table = report.table()
    record = {
        "checkpoint": str(checkpoint),
        "validation": {k: v for k, v in dataclasses.asdict(metrics).items() if k != "codebook_usage"},
        "codebook_usage": metrics.codebook_usage.tolist(),
        "phone_probe": report.to_dict(),
    }
    (output / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    (output / "probes.md").write_text(table + "\n")
    plotting.plot_phone_probe(report, output / "phone_probe.png")
    plotting.plot_codebook_usage(metrics.codebook_usage, output / "codebook_usage.png")
    return record, table, output
