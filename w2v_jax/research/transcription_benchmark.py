"""Measurements of transcription: alignment boundary errors against the embedded corpus's gold
boundaries, chunked against per-utterance decoding of long recordings, the masked group norm's
speed-up, and throughput against transformers' ASR pipeline. Each returns a dict of figures
(`w2v-benchmark-transcription`, docs/transcription.md).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from w2v_jax.asr import timestamps
from w2v_jax.asr.decoding import SEPARATORS, CTCDecoder
from w2v_jax.asr.error_rates import error_rate_metrics
from w2v_jax.asr.transcription import model_forward, transcribe
from w2v_jax.checkpoints.hf import save_hf_checkpoint
from w2v_jax.checkpoints.loading import load_ctc_checkpoint
from w2v_jax.data import audio
from w2v_jax.data.labels import LabelKind, letters_to_words, normalize_text, read_label_tokens
from w2v_jax.data.manifest import load_manifest
from w2v_jax.data.utterances import read_metadata
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.reference import import_reference
from w2v_jax.representations import EncoderModel, extract_representations


def _split(manifest_path: str | os.PathLike, normalize: bool) -> tuple[list[pathlib.Path], list[np.ndarray]]:
    manifest = load_manifest(manifest_path)
    files = [manifest.file_path(i) for i in range(len(manifest))]
    return files, [audio.load_audio(f, normalize_audio=normalize) for f in files]


def _timed(run: Callable[[], object]) -> float:
    begin = time.perf_counter()
    run()
    return time.perf_counter() - begin


def boundary_errors(
    checkpoint: str | os.PathLike, manifest_path: str | os.PathLike, kind: LabelKind
) -> dict[str, str | float]:
    """Median and 90th percentile |aligned - gold| boundary error (ms) of the forced alignment of the
    manifest's transcripts (words for letters, phones for phones) against `metadata.jsonl` beside it.
    Utterances whose normalised gold tokens differ from the transcript's are left out (counted)."""
    level = "word" if kind == "ltr" else "phone"
    aligned, seconds = timestamps.align_manifest(checkpoint, manifest_path, kind, level)
    results = list(aligned)
    manifest = load_manifest(manifest_path)
    metadata = read_metadata(pathlib.Path(manifest_path).parent / "metadata.jsonl")
    by_file = {manifest.file_path(i): manifest.paths[i] for i in range(len(manifest))}
    errors, skipped = [], 0
    for file, _, found in results:
        record = metadata[by_file[file]]
        if level == "word":
            gold = [
                (normalize_text(w), s, e)
                for w, s, e in zip(record["words"], record["word_starts"], record["word_ends"])
            ]
            gold = [g for g in gold if g[0]]
        else:
            gold = [
                (p, s, e)
                for p, s, e in zip(record["phonemes"], record["phoneme_starts"], record["phoneme_ends"])
                if p != "_"
            ]
        if [g[0] for g in gold] != [s.token for s in found]:
            skipped += 1
            continue
        for (_, start, end), segment in zip(gold, found):
            errors.append(abs(segment.start * seconds - start / audio.SAMPLE_RATE))
            errors.append(abs(segment.end * seconds - end / audio.SAMPLE_RATE))
    errors_ms = 1000 * np.asarray(errors)
    return {
        "level": level,
        "boundaries": len(errors),
        "utterances_compared": len(results) - skipped,
        "utterances_skipped": skipped,
        "median_ms": float(np.median(errors_ms)),
        "p90_ms": float(np.percentile(errors_ms, 90)),
    }


def long_recordings(
    waveforms: Sequence[np.ndarray], references: Sequence[str], per_recording: int, pause_s: float
) -> tuple[list[np.ndarray], list[str]]:
    """Consecutive groups of `per_recording` utterances joined with `pause_s` of silence between them."""
    pause = np.zeros(int(pause_s * audio.SAMPLE_RATE), np.float32)
    recordings, texts = [], []
    for begin in range(0, len(waveforms) - per_recording + 1, per_recording):
        parts = []
        for w in waveforms[begin : begin + per_recording]:
            parts += [w, pause]
        recordings.append(np.concatenate(parts[:-1]))
        texts.append(" ".join(references[begin : begin + per_recording]))
    return recordings, texts


def chunked_against_alone(
    checkpoint: str | os.PathLike,
    manifest_path: str | os.PathLike,
    *,
    per_recording: int = 5,
    pause_s: float = 0.5,
    chunk_s: float = 20.0,
    batch_size: int = 8,
    decoder: Callable[[Vocabulary], CTCDecoder] | None = None,
) -> dict[str, float]:
    """CER and WER of long recordings (utterances joined with pauses) transcribed in chunks, against
    those of the same utterances transcribed alone and joined (letter models); greedy unless `decoder`
    (built from the checkpoint's vocabulary, e.g. beam search with an LM)."""
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint)
    utterance_decoder = decoder(vocabulary) if decoder is not None else None
    files, raw = _split(manifest_path, normalize=False)
    references = [letters_to_words(t) for t in read_label_tokens(manifest_path, "ltr", len(files))]
    # Normalised per recording, as a user's long file is.
    recordings, texts = long_recordings(raw, references, per_recording, pause_s)
    recordings = [audio.normalize(r) if normalize else r for r in recordings]
    alone = transcribe(
        model, [audio.normalize(w) if normalize else w for w in raw], vocabulary, batch_size, "", utterance_decoder
    )
    used = len(recordings) * per_recording
    joined = [" ".join(alone[b : b + per_recording]) for b in range(0, used, per_recording)]
    chunked = transcribe(model, recordings, vocabulary, batch_size, "", utterance_decoder, chunk_s=chunk_s)
    scores = {
        name: error_rate_metrics(texts, hypotheses, "ltr")
        for name, hypotheses in (("chunked", chunked), ("alone", joined))
    }
    return {
        "recordings": len(recordings),
        "mean_recording_s": float(np.mean([len(r) for r in recordings]) / audio.SAMPLE_RATE),
        **{f"{metric}_{name}": value for name, values in scores.items() for metric, value in values.items()},
    }


def masked_speedup(checkpoint: str | os.PathLike, manifest_path: str | os.PathLike, batch_size: int = 8) -> dict:
    """Seconds to transcribe (and to extract `model.features`) of a split: each utterance alone at its
    own length (the group-norm path before the masked group norm) against padded batches with the
    masked group norm; first call (compiles included) and second call."""
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint)
    _, waveforms = _split(manifest_path, normalize)
    forward = model_forward(model)

    def alone() -> None:
        for w in waveforms:
            np.asarray(forward(w[None], None))

    def batched() -> None:
        transcribe(model, waveforms, vocabulary, batch_size)

    figures: dict[str, str | float] = {"group_norm": model.config.feat_extract_norm, "utterances": len(waveforms)}
    for name, run in (
        ("transcribe_alone", alone),
        ("transcribe_masked", batched),
        ("features_exact", lambda: model_features(model, waveforms, "exact", batch_size)),
        ("features_masked", lambda: model_features(model, waveforms, "masked", batch_size)),
    ):
        figures[f"{name}_first_s"] = _timed(run)
        figures[f"{name}_s"] = _timed(run)
    return figures


def model_features(model: EncoderModel, waveforms: Sequence[np.ndarray], group_norm: str, batch_size: int) -> None:
    """`representations.extract_representations` (`model.features`) on the model's encoder."""
    extract_representations(model, waveforms, batch_size=batch_size, group_norm=group_norm)


def pipeline_throughput(
    checkpoint: str | os.PathLike, manifest_path: str | os.PathLike, kind: LabelKind = "ltr", batch_size: int = 8
) -> dict[str, float]:
    """Audio-seconds per second, greedy, of `transcribe` and of transformers' ASR pipeline on the same
    exported model and files (compiled / warmed up by a first pass; one process)."""
    torch = import_reference("torch", "the pipeline comparison")
    transformers = import_reference("transformers", "the pipeline comparison")
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint)
    files, raw = _split(manifest_path, normalize=False)
    waveforms = [audio.normalize(w) if normalize else w for w in raw]
    seconds = sum(len(w) for w in raw) / audio.SAMPLE_RATE
    ours = lambda: transcribe(model, waveforms, vocabulary, batch_size, SEPARATORS[kind])  # noqa: E731
    ours()
    ours_s = _timed(ours)
    with tempfile.TemporaryDirectory() as folder:
        save_hf_checkpoint(model.config, model, folder, vocabulary=vocabulary)
        asr = transformers.pipeline("automatic-speech-recognition", model=folder, device="cpu")
        # The pipeline pops the keys of its input dicts: new ones each pass.
        theirs = lambda: asr([{"raw": w, "sampling_rate": audio.SAMPLE_RATE} for w in raw], batch_size=1)  # noqa: E731
        with torch.inference_mode():
            theirs()
            theirs_s = _timed(theirs)
    return {
        "audio_s": seconds,
        "ours_audio_s_per_s": seconds / ours_s,
        "pipeline_audio_s_per_s": seconds / theirs_s,
        "torch_threads": torch.get_num_threads(),
    }


_PEAK_MEMORY_SCRIPT = """
import resource, sys
import numpy as np
from w2v_jax.asr.transcription import transcribe
from w2v_jax.checkpoints.loading import load_ctc_checkpoint
from w2v_jax.data.audio import SAMPLE_RATE
model, vocabulary, _ = load_ctc_checkpoint(sys.argv[1])
seconds, chunk_s = float(sys.argv[2]), float(sys.argv[3])
speech = np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
transcribe(model, [speech], vocabulary, 8, chunk_s=chunk_s)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_memory(
    checkpoint: str | os.PathLike, minutes: Sequence[float] = (1.0, 10.0), chunk_s: float = 20.0
) -> dict[str, float]:
    """Peak resident memory (MiB) of a process transcribing one recording of each length in chunks:
    before transcribing (model and recording loaded) and at the end (`ru_maxrss`)."""
    figures = {}
    for length in minutes:
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_MEMORY_SCRIPT, str(checkpoint), str(60 * length), str(chunk_s)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        before, after = (int(v) / 1024 for v in out[-2:])  # KiB on Linux
        figures[f"{length:g}_min_loaded_mib"] = before
        figures[f"{length:g}_min_peak_mib"] = after
    return figures
