"""Error rates of a fine-tuned model: validation inside fine-tuning and evaluation of a checkpoint.

`CTCEvaluator` runs every `train.eval_every` updates: WER and CER (PER for phones) of the transcripts
of the valid manifest (group-norm models zero-padded to a few widths without attention mask, as in
training, rather than `transcribe`'s exact equal-length batches); it keeps the best model by
`train.best_metric` in `WORKDIR/best/` (our folder format + vocabulary), which `transcribe`,
`evaluate` and `jax-to-hf` read by default. `evaluate_finetuned_checkpoint` scores any fine-tuned
checkpoint on a labelled manifest with exact batching; `evaluate_decoders` scores several decoders
(greedy, beam search with or without an LM) on the logits of one forward pass, with their speed,
and `sweep_lm_weights` searches the LM weight and word score of beam search on it.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import jax
import numpy as np
from flax import nnx

from w2v_jax.asr.decoding import SEPARATORS, CTCDecoder, GreedyDecoder
from w2v_jax.asr.error_rates import METRICS, ErrorCounts, error_rate_metrics
from w2v_jax.asr.transcription import (
    READ_BATCHES,
    BadFile,
    model_forward,
    read_in_batches,
    transcribe,
    transcribe_waveforms,
)
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.checkpoints.loading import load_ctc_checkpoint
from w2v_jax.checkpoints.run_layout import BEST_MODEL_DIR, BEST_RECORD_FILE
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import audio
from w2v_jax.data.labels import LabelKind, LabelSet
from w2v_jax.data.manifest import load_manifest
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC

logger = logging.getLogger(__name__)


def labelled_batches(
    manifest_path: str, labels: LabelSet, *, normalize: bool, size: int, on_bad_file: BadFile | None = None
) -> Iterator[tuple[list[np.ndarray], list[str]]]:
    """The usable rows of a labelled manifest (or shard set), `size` readable rows at a time: waveforms
    and references (normalised). Unreadable rows go to `on_bad_file` and are left out
    (`transcription.read_in_batches`; None: the first raises, after the rows before it are yielded)."""
    manifest = load_manifest(manifest_path)
    rows = [int(index) for index in labels.usable_indices()]
    files = [manifest.file_path(index) for index in rows]
    row_of = dict(zip(files, rows))
    reference_of = {file: labels.reference(index) for file, index in zip(files, rows)}
    batches = read_in_batches(
        files,
        normalize=normalize,
        size=size,
        on_bad_file=on_bad_file,
        read=lambda file: manifest.read(row_of[file]).samples,
    )
    for readable, waveforms in batches:
        yield waveforms, [reference_of[file] for file in readable]


def load_labelled_waveforms(
    manifest_path: str, labels: LabelSet, *, normalize: bool, on_bad_file: BadFile | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Every usable row of a labelled manifest at once: waveforms and references (`labelled_batches`;
    None: the first unreadable file raises and nothing is returned)."""
    waveforms: list[np.ndarray] = []
    references: list[str] = []
    for batch_waveforms, batch_references in labelled_batches(
        manifest_path, labels, normalize=normalize, size=max(len(labels), 1), on_bad_file=on_bad_file
    ):
        waveforms += batch_waveforms
        references += batch_references
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
        kind: LabelKind,
        *,
        batch_size: int,
        workdir: pathlib.Path | None,
        best_metric: str,
        write: bool = True,
        normalize: bool = True,
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
        self._normalize = normalize  # the best model's processor files say so
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
        if self._write and self._workdir is not None:
            self._keep_best(self._workdir, state, step, values, hypotheses)
        return values

    def _keep_best(
        self, workdir: pathlib.Path, state: Any, step: int, values: dict[str, float], hypotheses: list[str]
    ) -> None:
        path = workdir / BEST_RECORD_FILE
        stored = read_best_record(workdir) or {"history": []}
        # Evaluations after this step belong to an interrupted run that this one replays.
        history = [h for h in stored["history"] if h["step"] < step] + [{"step": step, **values}]
        best = min(history, key=lambda h: (h[self._best_metric], h["step"]))
        if best["step"] == step:
            model = nnx.merge(self._graphdef, jax.device_get(state.params), jax.device_get(state.model_state))
            save_checkpoint(
                self._config, model, workdir / BEST_MODEL_DIR, vocabulary=self._vocabulary, do_normalize=self._normalize
            )
            (workdir / BEST_MODEL_DIR / "transcripts.txt").write_text(
                "".join(f"{h}\n" for h in hypotheses), encoding="utf-8"
            )
            logger.info(
                "best %s so far: %.4f at step %d, saved to %s",
                self._best_metric,
                values[self._best_metric],
                step,
                workdir / BEST_MODEL_DIR,
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
    kind: LabelKind = "ltr",
    *,
    step: int | None = None,
    batch_size: int = 8,
    on_bad_file: BadFile | None = None,
) -> dict[str, Any]:
    """Error rates of a fine-tuned checkpoint on a labelled manifest (`transcribe`, exact batching);
    unreadable files go to `on_bad_file` (`labelled_batches`).

    Rows are read and transcribed `batch_size * READ_BATCHES` at a time and their edits counted
    (`error_rates.ErrorCounts`), so memory does not grow with the manifest.
    Returns {"wer", "cer"} (letters) or {"per"} (phones), plus "num_utterances" and the label skips.
    """
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint, step)
    labels = LabelSet(manifest, kind, vocabulary, model.num_frames)
    forward = model_forward(model)
    counts = ErrorCounts(kind)
    num_utterances = 0
    for waveforms, references in labelled_batches(
        str(manifest), labels, normalize=normalize, size=batch_size * READ_BATCHES, on_bad_file=on_bad_file
    ):
        counts.add(references, transcribe(model, waveforms, vocabulary, batch_size, SEPARATORS[kind], forward=forward))
        num_utterances += len(waveforms)
    return {
        **counts.rates(),
        "num_utterances": num_utterances,
        **{f"skipped_{k}": v for k, v in labels.skip_counts().items()},
        "unknown_symbols": labels.num_unknown(),
    }


DecoderFactory = Callable[[Vocabulary], CTCDecoder]


def evaluate_decoders(
    checkpoint: str | os.PathLike,
    manifest: str | os.PathLike,
    decoders: Mapping[str, DecoderFactory],
    kind: LabelKind = "ltr",
    *,
    step: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Error rates and speed of each decoder on one forward pass's logits of a labelled manifest.

    Args:
      decoders: name -> a function building the decoder from the checkpoint's vocabulary.
    Returns:
      {"num_utterances", "audio_seconds", "forward_seconds", "unknown_symbols" (label symbols outside
      the vocabulary), "decoders": {name: {error rates,
      "decode_seconds", "utterances_per_second", "real_time_factor"}}}: speed counts the forward pass
      plus that decoder's decoding; the real-time factor is that time over the audio's duration.
    """
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint, step)
    labels = LabelSet(manifest, kind, vocabulary, model.num_frames)
    waveforms, references = load_labelled_waveforms(str(manifest), labels, normalize=normalize)
    forward = model_forward(model)
    logits: list[np.ndarray | None] = [None] * len(waveforms)
    transcribe = functools.partial(
        transcribe_waveforms,
        forward,
        waveforms,
        vocabulary,
        model.config,
        batch_size=batch_size,
        num_frames=model.num_frames,
        separator=SEPARATORS[kind],
    )
    transcribe()  # compiles
    start = time.perf_counter()
    transcribe(logits_out=logits)
    forward_seconds = time.perf_counter() - start
    audio_seconds = sum(len(w) for w in waveforms) / audio.SAMPLE_RATE
    record: dict[str, Any] = {
        "num_utterances": len(waveforms),
        "audio_seconds": audio_seconds,
        "forward_seconds": forward_seconds,
        "unknown_symbols": labels.num_unknown(),
        "decoders": {},
    }
    for name, factory in decoders.items():
        decoder = factory(vocabulary)
        start = time.perf_counter()
        hypotheses = [decoder.decode(row).text for row in cast(list[np.ndarray], logits)]  # every row filled
        decode_seconds = time.perf_counter() - start
        total = forward_seconds + decode_seconds
        record["decoders"][name] = {
            **error_rate_metrics(references, hypotheses, kind),
            "decode_seconds": decode_seconds,
            "utterances_per_second": len(waveforms) / total,
            "real_time_factor": total / audio_seconds,
        }
        logger.info("%s: %s", name, record["decoders"][name])
    return record


def sweep_lm_weights(
    checkpoint: str | os.PathLike,
    manifest: str | os.PathLike,
    decoder: Callable[[Vocabulary, float, float], CTCDecoder],
    lm_weights: Sequence[float],
    word_scores: Sequence[float],
    kind: LabelKind = "ltr",
    *,
    step: int | None = None,
    batch_size: int = 8,
    extra_decoders: Mapping[str, DecoderFactory] | None = None,
) -> dict[str, Any]:
    """Error rates of beam search at every (LM weight, word score) pair, greedy beside them.

    Args:
      decoder: `(vocabulary, lm_weight, word_score) -> decoder`.
      extra_decoders: more decoders to score beside them (e.g. beam search without the LM).
    Returns:
      `evaluate_decoders`' record (decoders named "greedy" and "alpha=A,beta=B") plus "grid":
      [{"lm_weight", "word_score", error rates}] and "best": the pair with the lowest WER (PER for
      phones), ties to the lower CER, then the smaller weights.
    """
    metric = METRICS[kind][0]
    pairs = list(itertools.product(lm_weights, word_scores))
    decoders: dict[str, DecoderFactory] = {
        "greedy": lambda vocabulary: GreedyDecoder(vocabulary, SEPARATORS[kind]),
        **(extra_decoders or {}),
    }
    for alpha, beta in pairs:

        def beam_search(v: Vocabulary, a: float = alpha, b: float = beta) -> CTCDecoder:
            return decoder(v, a, b)

        decoders[f"alpha={alpha:g},beta={beta:g}"] = beam_search
    record = evaluate_decoders(checkpoint, manifest, decoders, kind, step=step, batch_size=batch_size)
    grid = []
    for alpha, beta in pairs:
        values = record["decoders"][f"alpha={alpha:g},beta={beta:g}"]
        grid.append({"lm_weight": alpha, "word_score": beta, **{m: values[m] for m in METRICS[kind]}})
    record["grid"] = grid
    record["best"] = min(grid, key=lambda g: (g[metric], g.get("cer", 0.0), g["lm_weight"], g["word_score"]))
    return record


def read_best_record(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """A fine-tuning workdir's `best.json` (`{"step", "metric", "value", "history"}`), or None."""
    path = pathlib.Path(workdir) / BEST_RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None
