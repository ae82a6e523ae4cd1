"""Transcription with a fine-tuned (CTC) model: greedy transcripts of waveforms and of audio files.

`transcribe_waveforms` batches padded utterances with attention masks: exact for layer-norm models
(their outputs don't depend on padding) and for group-norm models through the masked group norm
(`Wav2Vec2Model`'s `group_norm="masked"`: each utterance's transcript as if alone); for validation
inside training, group-norm models are zero-padded without attention mask, as they are trained.
`transcribe` sends recordings longer than `chunk_s` through `long_form` (chunks, stitched logits).
`transcribe_files` transcribes every readable file, a batch of files at a time, and reports each
unreadable one.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import jax
import numpy as np
from flax import nnx

from w2v_jax import sharding
from w2v_jax.asr import long_form
from w2v_jax.asr.decoding import CTCDecoder, GreedyDecoder
from w2v_jax.asr.long_form import Forward
from w2v_jax.checkpoints.loading import load_ctc_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import audio
from w2v_jax.data.manifest import load_manifest
from w2v_jax.data.pipeline import bucket_lengths
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC
from w2v_jax.representations import BUCKET_LADDER


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
    decoder: CTCDecoder | None = None,
    logits_out: list[np.ndarray | None] | None = None,
) -> list[str]:
    """Transcripts of waveforms, in order, batched as the module docstring says (greedy by default).

    Args:
      forward: `(input_values [batch, samples], attention_mask [batch, samples] | None) -> logits
        [batch, frames, vocab]`; a group-norm model given an attention mask uses the masked group norm.
      waveforms: float32 `[samples]` each (normalised as the model was trained).
      vocabulary: the head's tokens.
      config: the model's config (its feature norm decides the batching).
      batch_size: rows per forward call.
      num_frames: samples -> frames of the model.
      exact: group-norm models with attention masks (the masked group norm: each utterance's
        transcript as if alone); False: without attention mask, as they are trained (validation).
      separator: between tokens (`decoding.SEPARATORS`: "" for letters, " " for phones).
      decoder: decodes each utterance's logits (`decoding.CTCDecoder`; default greedy with `separator`).
      logits_out: when given (a list of `len(waveforms)`), receives each utterance's unpadded logits
        `[frames, vocab]` (float32), so that other decoders can run on them without the forward pass.
    """
    decoder = decoder or GreedyDecoder(vocabulary, separator)
    texts: list[str | None] = [None] * len(waveforms)

    def decode(indices: np.ndarray, logits: jax.Array, lengths: np.ndarray) -> None:
        for index, row, length in zip(indices, np.asarray(logits, np.float32), np.asarray(lengths)):
            texts[int(index)] = decoder.decode(row, int(length)).text
            if logits_out is not None:
                logits_out[int(index)] = row[: int(length)]

    unmasked = config.feat_extract_norm == "group" and not exact
    for rows, logits, frame_lengths in padded_batches(
        forward, waveforms, batch_size=batch_size, num_frames=num_frames, attention_mask=not unmasked, fine=exact
    ):
        decode(rows, logits, frame_lengths)
    return cast(list[str], texts)  # every utterance decoded


def padded_batches(
    forward: Forward,
    waveforms: Sequence[np.ndarray],
    *,
    batch_size: int,
    num_frames: Callable[[Any], Any],
    attention_mask: bool = True,
    fine: bool = True,
) -> Iterator[tuple[np.ndarray, jax.Array, np.ndarray]]:
    """The model on zero-padded batches of similar lengths: `(rows, logits [batch_size, frames, vocab],
    frame_lengths [batch_size])` per call, `rows` the waveforms' indices (filler rows after them).

    Widths come from fixed ladders, so the forward compiles a few times per corpus and the compiles
    carry over to the next call: `fine`, `representations.BUCKET_LADDER` (steps of 2**(1/4), at most
    19% padding); else four geometric widths up to the longest utterance, as the training buckets
    (validation). `attention_mask=False` calls the model without one (group-norm validation).
    """
    lengths = np.asarray([len(w) for w in waveforms], np.int64)
    longest = max(int(lengths.max()), audio.RECEPTIVE_FIELD)
    if fine:
        widths = BUCKET_LADDER[: np.searchsorted(BUCKET_LADDER, longest) + 1]
    else:
        widths = bucket_lengths(audio.RECEPTIVE_FIELD, longest, 4, pad=True)
    order = np.argsort(lengths, kind="stable")
    for begin in range(0, len(order), batch_size):
        rows = order[begin : begin + batch_size]
        width = int(widths[np.searchsorted(widths, max(int(lengths[rows].max()), audio.RECEPTIVE_FIELD))])
        input_values = np.zeros((batch_size, width), np.float32)
        mask = np.zeros((batch_size, width), np.int32)
        for slot, index in enumerate(rows):
            input_values[slot, : lengths[index]] = waveforms[index]
            mask[slot, : lengths[index]] = 1
        mask[len(rows) :, : audio.RECEPTIVE_FIELD] = 1  # filler rows: any valid length
        logits = forward(input_values, mask if attention_mask else None)
        yield rows, logits, np.asarray(num_frames(mask.sum(-1)), np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _eval_logits(
    graphdef: nnx.GraphDef, state: nnx.State, input_values: jax.Array, attention_mask: jax.Array | None
) -> jax.Array:
    return nnx.merge(graphdef, state)(input_values, attention_mask, group_norm="masked").logits


def model_forward(model: Wav2Vec2ForCTC) -> Forward:
    """A jitted eval-mode `Forward` of a model (the masked group norm where an attention mask is given).

    One compiled function for every model of the same structure (the graph definition is a static
    argument): transcribing again, or with a reloaded checkpoint, reuses the compiles per input shape.
    With several devices the weights are replicated and a batch whose rows divide evenly is split
    over the devices of a data-parallel mesh (`w2v_jax.sharding`).
    """
    graphdef, state = nnx.split(model)
    if jax.device_count() == 1:
        return lambda x, mask: _eval_logits(graphdef, state, x, mask)
    # Several devices: the weights on each, the batch's rows (utterances or chunks) split over them.
    mesh = sharding.make_mesh()
    state = jax.device_put(state, sharding.replicated(mesh))
    rows = sharding.batch_sharding(mesh)

    def forward(x: np.ndarray, mask: np.ndarray | None) -> jax.Array:
        if x.shape[0] % jax.device_count():
            return _eval_logits(graphdef, state, x, mask)
        x, mask = jax.device_put(x, rows), None if mask is None else jax.device_put(mask, rows)
        return _eval_logits(graphdef, state, x, mask)

    return forward


def transcribe(
    model: Wav2Vec2ForCTC,
    waveforms: Sequence[np.ndarray],
    vocabulary: Vocabulary,
    batch_size: int = 8,
    separator: str = "",
    decoder: CTCDecoder | None = None,
    *,
    chunk_s: float | None = None,
    stride_s: float | None = None,
    forward: Forward | None = None,
) -> list[str]:
    """Transcripts of `waveforms` (float32 `[samples]`, normalised as in training): greedy, tokens
    joined by `separator` (" " for phones), or by `decoder`. With `chunk_s`, waveforms longer than a
    chunk are transcribed in chunks (`long_form`, strides `stride_s`, default a sixth of the chunk),
    their stitched logits decoded by the same decoder; shorter ones whole, as without it.
    `forward`: the model's (`model_forward`), when the caller keeps one across calls."""
    decoder = decoder or GreedyDecoder(vocabulary, separator)
    return each_recording(
        model,
        forward or model_forward(model),
        waveforms,
        lambda _, logits: decoder.decode(logits, len(logits)).text,
        batch_size=batch_size,
        chunk_s=chunk_s,
        stride_s=stride_s,
    )


Result = TypeVar("Result")


def each_recording(
    model: Wav2Vec2ForCTC,
    forward: Forward,
    waveforms: Sequence[np.ndarray],
    consume: Callable[[int, np.ndarray], Result],
    *,
    batch_size: int,
    chunk_s: float | None,
    stride_s: float | None,
) -> list[Result]:
    """`consume(index, logits [frames, vocab] float32)` of each waveform, the results in order.

    Waveforms longer than `chunk_s` seconds run in chunks (`long_form.stitched_logits`), one recording
    at a time; the others whole, in padded batches (`padded_batches`). Each recording's logits go to
    `consume` as soon as they are made and are dropped after it: only the current recording's chunks
    or the current batch's logits are held.
    """
    results: list[Any] = [None] * len(waveforms)
    done = [False] * len(waveforms)
    if chunk_s is not None:
        frame_stride = model.wav2vec2.feature_extractor.total_stride
        chunk, stride = long_form.chunk_samples(
            chunk_s,
            stride_s,
            sample_rate=audio.SAMPLE_RATE,
            frame_stride=frame_stride,
            receptive_field=audio.RECEPTIVE_FIELD,
        )
        for index, waveform in enumerate(waveforms):
            if len(waveform) > chunk:
                logits = long_form.stitched_logits(
                    forward,
                    waveform,
                    chunk=chunk,
                    stride=stride,
                    batch_size=batch_size,
                    frame_stride=frame_stride,
                    num_frames=model.num_frames,
                    receptive_field=audio.RECEPTIVE_FIELD,
                )
                results[index], done[index] = consume(index, np.asarray(logits, np.float32)), True
    short = [i for i in range(len(waveforms)) if not done[i]]
    if short:
        batches = padded_batches(
            forward, [waveforms[i] for i in short], batch_size=batch_size, num_frames=model.num_frames
        )
        for rows, batch_logits, batch_lengths in batches:
            logits, frame_lengths = np.asarray(batch_logits, np.float32), np.asarray(batch_lengths)
            for slot, row in enumerate(rows):
                index = short[int(row)]
                results[index] = consume(index, logits[slot, : frame_lengths[slot]])
    return results


def read_inputs(paths: Sequence[str | os.PathLike], *, strict: bool = True) -> list[pathlib.Path]:
    """Audio files to transcribe: each path is an audio file or a manifest (`.tsv`, all its rows).

    A path that is neither is a ValueError when `strict`, else kept (reading it reports it).
    """
    files = []
    for path in map(pathlib.Path, paths):
        if path.suffix == ".tsv":
            manifest = load_manifest(path)
            files += [manifest.file_path(i) for i in range(len(manifest))]
        elif path.is_file() or not strict:
            files.append(path)
        else:
            raise ValueError(f"{path}: no such audio file or manifest")
    return files


BadFile = Callable[[pathlib.Path, str], None]

# Files are read this many forward batches at a time: enough to sort them into batches of similar
# lengths, few enough that memory does not grow with the number of files.
READ_BATCHES = 8


def read_in_batches(
    files: Sequence[pathlib.Path],
    *,
    normalize: bool,
    size: int,
    on_bad_file: BadFile | None = None,
    read: Callable[[pathlib.Path], np.ndarray] | None = None,
) -> Iterator[tuple[list[pathlib.Path], list[np.ndarray]]]:
    """The readable files and their waveforms, in order, `size` readable files at a time (the last
    batch fewer).

    Args:
      files: audio files.
      normalize: zero mean, unit variance (as the model was trained).
      size: readable files per batch.
      on_bad_file: called with each unreadable file and its one-line reason as it is met; None:
        the first one raises (`data.audio.AudioError`, a ValueError naming the file), after the
        files read before it are yielded, so that their results are written before the run ends.
      read: file -> 16 kHz mono float32 [samples], raising `data.audio.AudioError` (None: decode the
        file; a shard set's rows are read from its shards).
    """
    readable: list[pathlib.Path] = []
    waveforms: list[np.ndarray] = []
    for file in files:
        try:
            if read is None:
                waveform = audio.load_audio(file, normalize_audio=normalize)
            else:
                waveform = read(file)
                waveform = audio.normalize(waveform) if normalize else waveform
        except audio.AudioError as error:
            if on_bad_file is None:
                if readable:
                    yield readable, waveforms
                raise
            on_bad_file(file, str(error))
            continue
        readable.append(file)
        waveforms.append(waveform)
        if len(readable) == size:
            yield readable, waveforms
            readable, waveforms = [], []
    if readable:
        yield readable, waveforms


def each_file(
    model: Wav2Vec2ForCTC,
    files: Sequence[pathlib.Path],
    consume: Callable[[pathlib.Path, np.ndarray], Result],
    *,
    normalize: bool,
    batch_size: int,
    chunk_s: float | None,
    stride_s: float | None,
    on_bad_file: BadFile | None,
) -> Iterator[tuple[pathlib.Path, Result]]:
    """`(file, consume(file, logits [frames, vocab]))` of each readable file, in order, as they are made.

    Files are read `batch_size * READ_BATCHES` at a time (`read_in_batches`) and run through
    `each_recording`, so memory does not grow with their number; unreadable files go to
    `on_bad_file` (None: the first one raises once the results of the files before it are yielded).
    """
    forward = model_forward(model)
    size = batch_size * READ_BATCHES
    for batch, waveforms in read_in_batches(files, normalize=normalize, size=size, on_bad_file=on_bad_file):

        def consume_row(index: int, logits: np.ndarray, batch: list[pathlib.Path] = batch) -> Result:
            return consume(batch[index], logits)

        results = each_recording(
            model,
            forward,
            waveforms,
            consume_row,
            batch_size=batch_size,
            chunk_s=chunk_s,
            stride_s=stride_s,
        )
        yield from zip(batch, results)


def transcribe_files(
    checkpoint: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    *,
    step: int | None = None,
    batch_size: int = 8,
    separator: str = "",
    decoder: Callable[[Vocabulary], CTCDecoder] | None = None,
    chunk_s: float | None = None,
    stride_s: float | None = None,
    on_bad_file: BadFile | None = None,
) -> Iterator[tuple[pathlib.Path, str]]:
    """`(file, transcript)` for every readable audio file or manifest row in `paths`, in order, as
    they are made, a few batches of files at a time (`each_file`): `load_ctc_checkpoint`, then what
    `transcribe` gives with `separator`, `chunk_s` and `stride_s` (`decoder` builds the decoder from
    the checkpoint's vocabulary, default greedy). Unreadable files go to `on_bad_file` (None: the
    first one raises once the transcripts of the files before it are yielded).
    """
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint, step)
    files = read_inputs(paths, strict=on_bad_file is None)
    utterance_decoder = decoder(vocabulary) if decoder is not None else GreedyDecoder(vocabulary, separator)
    yield from each_file(
        model,
        files,
        lambda _, logits: utterance_decoder.decode(logits, len(logits)).text,
        normalize=normalize,
        batch_size=batch_size,
        chunk_s=chunk_s,
        stride_s=stride_s,
        on_bad_file=on_bad_file,
    )
