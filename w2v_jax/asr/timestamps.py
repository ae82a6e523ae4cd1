"""Timestamps of transcripts: each recording's logits (whole or in chunks), its transcript (decoded, or
given: forced alignment of a known text), and the time segments of its words, letters or phones.

Segments come from the CTC forced alignment of the transcript on the log-softmax logits
(`alignment.forced_align`); for a greedy transcript that is the greedy path itself. A segment's
times are its frames on the model's 20 ms grid (`start` the first frame's start, `end` one past
the last frame); its score is the mean probability of its frames. Written as JSON lines
(`{"path", "text", "segments": [{"token", "start", "end", "score"}]}`, seconds) and as CTM
(`utterance channel start duration token score`).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

import jax
import numpy as np

from w2v_jax.asr import alignment, long_form
from w2v_jax.asr.alignment import Segment
from w2v_jax.asr.decoding import CTCDecoder, GreedyDecoder
from w2v_jax.asr.transcription import BadFile, each_file, each_recording, model_forward, read_inputs
from w2v_jax.checkpoints.loading import load_ctc_checkpoint
from w2v_jax.data import audio
from w2v_jax.data.labels import LabelKind, letters_to_words, read_label_tokens
from w2v_jax.data.manifest import load_manifest
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC

LEVELS = ("word", "char", "phone")
# Alignment shapes are rounded up to these, so forced alignment compiles a few times per corpus.
_FRAME_QUANTUM, _LABEL_QUANTUM = 256, 64


def frame_seconds(model: Wav2Vec2ForCTC) -> float:
    """Seconds between two frames (0.02 for wav2vec 2.0)."""
    return model.wav2vec2.feature_extractor.total_stride / audio.SAMPLE_RATE


def recording_logits(
    model: Wav2Vec2ForCTC,
    waveforms: Sequence[np.ndarray],
    *,
    batch_size: int = 8,
    chunk_s: float | None = long_form.DEFAULT_CHUNK_S,
    stride_s: float | None = None,
) -> list[np.ndarray]:
    """Each waveform's logits `[frames, vocab]`: recordings longer than `chunk_s` in chunks
    (`long_form.stitched_logits`), the others whole in padded batches (`transcription.each_recording`)."""
    return each_recording(
        model,
        model_forward(model),
        waveforms,
        lambda _, logits: logits,
        batch_size=batch_size,
        chunk_s=chunk_s,
        stride_s=stride_s,
    )


def _round_up(n: int, quantum: int) -> int:
    return max(-(-n // quantum) * quantum, quantum)


def align_tokens(logits: np.ndarray, token_ids: np.ndarray, blank: int) -> tuple[np.ndarray, np.ndarray]:
    """Forced alignment of one transcript on one recording's logits `[frames, vocab]`: `(path, scores)`
    `[frames]` (`alignment.forced_align`; shapes rounded up so a corpus compiles a few times)."""
    frames, labels = len(logits), len(token_ids)
    log_probs = np.zeros((1, _round_up(frames, _FRAME_QUANTUM), logits.shape[-1]), np.float32)
    log_probs[0, :frames] = jax.nn.log_softmax(np.asarray(logits, np.float32), axis=-1)
    targets = np.zeros((1, _round_up(labels, _LABEL_QUANTUM)), np.int32)
    targets[0, :labels] = token_ids
    path, scores = alignment.forced_align(log_probs, [frames], targets, [labels], blank=blank)
    return np.asarray(path[0, :frames]), np.asarray(scores[0, :frames])


def transcript_ids(tokens: Sequence[str], vocabulary: Vocabulary) -> np.ndarray:
    """A known transcript's token ids `[tokens]` in the model's vocabulary (in its casing,
    `Vocabulary.encode`); a ValueError counting and naming the symbols it cannot spell: a forced
    alignment of `<unk>` in their place would place words the model was never asked to find."""
    ids, unknown = vocabulary.encode(tokens)
    if unknown:
        outside = sorted({t for t in tokens if vocabulary.model_token(t) not in vocabulary})
        raise ValueError(f"the transcript has {unknown} symbols outside the model's vocabulary: {outside[:10]}")
    return ids


def segments(logits: np.ndarray, token_ids: np.ndarray, vocabulary: Vocabulary, level: str) -> list[Segment]:
    """The segments of a transcript (`token_ids`, with `|` between words for letters) at `level`:
    "word" (letters joined at the word delimiter), "char" (each letter) or "phone" (each token)."""
    if level not in LEVELS:
        raise ValueError(f"timestamps must be one of {LEVELS}, got {level!r}")
    path, scores = align_tokens(logits, token_ids, vocabulary.pad_id)
    tokens = alignment.token_segments(path, scores, vocabulary, vocabulary.pad_id)
    if level == "word":
        return alignment.word_segments(tokens, vocabulary.word_delimiter_token)
    return [t for t in tokens if t.token != vocabulary.word_delimiter_token]


def json_line(path: str | os.PathLike, text: str, found: Sequence[Segment], seconds_per_frame: float) -> str:
    """One recording's JSON line (module docstring)."""
    record = {"path": str(path), "text": text, "segments": [s.seconds(seconds_per_frame) for s in found]}
    return json.dumps(record, ensure_ascii=False)


def write_ctm(out: TextIO, utterance: str, found: Sequence[Segment], seconds_per_frame: float) -> None:
    """CTM lines `utterance 1 start duration token score` (seconds) of one recording's segments."""
    for s in found:
        start, duration = s.start * seconds_per_frame, (s.end - s.start) * seconds_per_frame
        out.write(f"{utterance} 1 {start:.3f} {duration:.3f} {s.token} {s.score:.4f}\n")


def utterance_id(path: str | os.PathLike) -> str:
    """A CTM utterance name: the file's name without its extension."""
    return pathlib.Path(path).stem


def transcribe_files_with_timestamps(
    checkpoint: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    level: str,
    *,
    step: int | None = None,
    batch_size: int = 8,
    separator: str = "",
    chunk_s: float | None = long_form.DEFAULT_CHUNK_S,
    stride_s: float | None = None,
    on_bad_file: BadFile | None = None,
    decoder: Callable[[Vocabulary], CTCDecoder] | None = None,
) -> tuple[Iterator[tuple[pathlib.Path, str, list[Segment]]], float]:
    """`transcription.transcribe_files` with each file's segments at `level`: `(file, transcript,
    segments)` as they are made, a batch of files at a time, and the seconds per frame."""
    if level not in LEVELS:
        raise ValueError(f"timestamps must be one of {LEVELS}, got {level!r}")
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint, step)
    files = read_inputs(paths, strict=on_bad_file is None)
    utterance_decoder = decoder(vocabulary) if decoder is not None else GreedyDecoder(vocabulary, separator)

    def transcript_and_segments(_: pathlib.Path, logits: np.ndarray) -> tuple[str, list[Segment]]:
        transcript = utterance_decoder.decode(logits, len(logits))
        return transcript.text, segments(logits, vocabulary.encode(transcript.tokens)[0], vocabulary, level)

    found = each_file(
        model,
        files,
        transcript_and_segments,
        normalize=normalize,
        batch_size=batch_size,
        chunk_s=chunk_s,
        stride_s=stride_s,
        on_bad_file=on_bad_file,
    )
    return ((file, text, s) for file, (text, s) in found), frame_seconds(model)


def align_manifest(
    checkpoint: str | os.PathLike,
    manifest_path: str | os.PathLike,
    kind: LabelKind,
    level: str,
    *,
    step: int | None = None,
    batch_size: int = 8,
    chunk_s: float | None = long_form.DEFAULT_CHUNK_S,
    stride_s: float | None = None,
    on_bad_file: BadFile | None = None,
) -> tuple[Iterator[tuple[pathlib.Path, str, list[Segment]]], float]:
    """Forced alignment of a manifest's transcripts (`.ltr`, else `.wrd`, for `kind="ltr"`; `.phn`)
    on its audio: `(file, transcript, segments at level)` per readable row, as they are made (a batch
    of files at a time, as `transcribe_files_with_timestamps`), and the seconds per frame.

    A transcript longer than its recording's frames allow, or with symbols the model cannot spell
    (`transcript_ids`), is reported like an unreadable file.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint, step)
    manifest = load_manifest(manifest_path)
    transcripts = read_label_tokens(manifest_path, kind, len(manifest))
    files = [manifest.file_path(i) for i in range(len(manifest))]
    by_file = dict(zip(files, transcripts))

    def aligned(file: pathlib.Path, logits: np.ndarray) -> tuple[str, list[Segment] | None]:
        tokens = by_file[file]
        text = letters_to_words(tokens) if kind == "ltr" else " ".join(tokens)
        try:
            return text, segments(logits, transcript_ids(tokens, vocabulary), vocabulary, level)
        except ValueError as error:
            if on_bad_file is None:
                raise ValueError(f"{file}: {error}") from None
            on_bad_file(file, f"{file}: {error}")
            return text, None

    found = each_file(
        model,
        files,
        aligned,
        normalize=normalize,
        batch_size=batch_size,
        chunk_s=chunk_s,
        stride_s=stride_s,
        on_bad_file=on_bad_file,
    )
    return ((file, text, s) for file, (text, s) in found if s is not None), frame_seconds(model)
