"""Error rates of a fine-tuned model: validation inside fine-tuning and evaluation of a checkpoint.

`CTCEvaluator` runs every `train.eval_every` updates: WER and CER (PER for phones) of the transcripts
of the valid manifest (group-norm models zero-padded to a few widths without attention mask, as in
training, rather than `transcribe`'s exact equal-length batches); it keeps the best model by
`train.best_metric` in `WORKDIR/best/` (our folder format + vocabulary), which `transcribe`,
`evaluate` and `jax-to-hf` read by default. `evaluate_finetuned_checkpoint` scores any fine-tuned
checkpoint on a labelled manifest with exact batching.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from w2v_jax.asr.decoding import SEPARATORS
from w2v_jax.asr.error_rates import METRICS, error_rate_metrics
from w2v_jax.asr.transcription import transcribe, transcribe_waveforms
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.checkpoints.loading import load_ctc_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import audio
from w2v_jax.data.labels import LabelSet
from w2v_jax.data.manifest import load_manifest
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC
from w2v_jax.training.workdir import BEST_MODEL_DIR, BEST_RECORD_FILE

logger = logging.getLogger(__name__)


def load_labelled_waveforms(
    manifest_path: str, labels: LabelSet, *, normalize: bool
) -> tuple[list[np.ndarray], list[str]]:
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

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        config: Wav2Vec2Config,
        waveforms: Sequence[np.ndarray],
        references: Sequence[str],
        vocabulary: Vocabulary,
        kind: str,
        *,
        batch_size: int,
        workdir: pathlib.Path | None,
        best_metric: str,
        write: bool = True,
    ):
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
        hypotheses = transcribe_waveforms(
            forward,
            self._waveforms,
            self._vocabulary,
            self._config,
            batch_size=self._batch_size,
            num_frames=self._num_frames,
            exact=False,
            separator=SEPARATORS[self._kind],
        )
        values = error_rate_metrics(self._references, hypotheses, self._kind)
        if self._write:
            self._keep_best(state, step, values, hypotheses)
        return values

    def _keep_best(self, state: Any, step: int, values: dict[str, float], hypotheses: list[str]) -> None:
        path = self._workdir / BEST_RECORD_FILE
        stored = read_best_record(self._workdir) or {"history": []}
        # Evaluations after this step belong to an interrupted run that this one replays.
        history = [h for h in stored["history"] if h["step"] < step] + [{"step": step, **values}]
        best = min(history, key=lambda h: (h[self._best_metric], h["step"]))
        if best["step"] == step:
            model = nnx.merge(self._graphdef, jax.device_get(state.params), jax.device_get(state.model_state))
            save_checkpoint(self._config, model, self._workdir / BEST_MODEL_DIR, vocabulary=self._vocabulary)
            (self._workdir / BEST_MODEL_DIR / "transcripts.txt").write_text(
                "".join(f"{h}\n" for h in hypotheses), encoding="utf-8"
            )
            logger.info(
                "best %s so far: %.4f at step %d, saved to %s",
                self._best_metric,
                values[self._best_metric],
                step,
                self._workdir / BEST_MODEL_DIR,
            )
        record = {
            "step": best["step"],
            "metric": self._best_metric,
            "value": best[self._best_metric],
            "history": history,
        }
        path.write_text(json.dumps(record, indent=1) + "\n")


def evaluate_finetuned_checkpoint(
    checkpoint: str | os.PathLike,
    manifest: str | os.PathLike,
    kind: str = "ltr",
    *,
    step: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Error rates of a fine-tuned checkpoint on a labelled manifest (`transcribe`, exact batching).

    Returns {"wer", "cer"} (letters) or {"per"} (phones), plus "num_utterances" and the label skips.
    """
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint, step)
    labels = LabelSet(manifest, kind, vocabulary, model.num_frames)
    waveforms, references = load_labelled_waveforms(str(manifest), labels, normalize=normalize)
    hypotheses = transcribe(model, waveforms, vocabulary, batch_size, SEPARATORS[kind])
    return {
        **error_rate_metrics(references, hypotheses, kind),
        "num_utterances": len(waveforms),
        **{f"skipped_{k}": v for k, v in labels.skip_counts().items()},
        "unknown_symbols": labels.num_unknown(),
    }


def read_best_record(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """A fine-tuning workdir's `best.json` (`{"step", "metric", "value", "history"}`), or None."""
    path = pathlib.Path(workdir) / BEST_RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None
