"""Transcription with a fine-tuned (CTC) model: greedy transcripts of waveforms and of audio files.

`transcribe_waveforms` batches: layer-norm models as padded batches with attention masks (exact:
their outputs don't depend on padding), group-norm models in batches of equal-length utterances
(exact, transformers' advice for them: no attention mask, no padding), or, for validation inside
training, zero-padded to a few widths without attention mask as they are trained.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from w2v_jax.asr.decoding import CTCDecoder, GreedyDecoder
from w2v_jax.checkpoints.loading import load_ctc_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data import audio
from w2v_jax.data.manifest import load_manifest
from w2v_jax.data.pipeline import bucket_lengths
from w2v_jax.data.utterances import equal_length_batches
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2ForCTC

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
    decoder: CTCDecoder | None = None,
    logits_out: list[np.ndarray | None] | None = None,
) -> list[str]:
    """Transcripts of waveforms, in order, batched as the module docstring says (greedy by default).

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
      separator: between tokens (`decoding.SEPARATORS`: "" for letters, " " for phones).
      decoder: decodes each utterance's logits (`decoding.CTCDecoder`; default greedy with `separator`).
      logits_out: when given (a list of `len(waveforms)`), receives each utterance's unpadded logits
        `[frames, vocab]` (float32), so that other decoders can run on them without the forward pass.
    """
    decoder = decoder or GreedyDecoder(vocabulary, separator)
    texts: list[str | None] = [None] * len(waveforms)

    def decode(indices: Sequence[int], logits: jax.Array, lengths: Any) -> None:
        logits, lengths = np.asarray(logits, np.float32), np.asarray(lengths)
        for index, row, length in zip(indices, logits, lengths):
            texts[int(index)] = decoder.decode(row, int(length)).text
            if logits_out is not None:
                logits_out[int(index)] = row[: int(length)]

    group_norm = config.feat_extract_norm == "group"
    if group_norm and exact:
        for indices, batch in equal_length_batches(waveforms, batch_size):
            logits = forward(batch, None)
            decode(indices, logits, np.full((batch.shape[0],), logits.shape[1]))
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
        decode(rows, logits, num_frames(attention_mask.sum(-1)))
    return texts


@functools.partial(jax.jit, static_argnums=0)
def _eval_logits(
    graphdef: nnx.GraphDef, state: nnx.State, input_values: jax.Array, attention_mask: jax.Array | None
) -> jax.Array:
    return nnx.merge(graphdef, state)(input_values, attention_mask).logits


def model_forward(model: Wav2Vec2ForCTC) -> Forward:
    """A jitted eval-mode `Forward` of a model.

    One compiled function for every model of the same structure (the graph definition is a static
    argument): transcribing again, or with a reloaded checkpoint, reuses the compiles per input shape.
    """
    graphdef, state = nnx.split(model)
    return lambda x, mask: _eval_logits(graphdef, state, x, mask)


def transcribe(
    model: Wav2Vec2ForCTC,
    waveforms: Sequence[np.ndarray],
    vocabulary: Vocabulary,
    batch_size: int = 8,
    separator: str = "",
    decoder: CTCDecoder | None = None,
) -> list[str]:
    """Transcripts of `waveforms` (float32 `[samples]`, normalised as in training): greedy, tokens
    joined by `separator` (" " for phones), or by `decoder`."""
    return transcribe_waveforms(
        model_forward(model),
        waveforms,
        vocabulary,
        model.config,
        batch_size=batch_size,
        num_frames=model.num_frames,
        separator=separator,
        decoder=decoder,
    )


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


def transcribe_files(
    checkpoint: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    *,
    step: int | None = None,
    batch_size: int = 8,
    separator: str = "",
    decoder: Callable[[Vocabulary], CTCDecoder] | None = None,
) -> list[tuple[pathlib.Path, str]]:
    """`(file, transcript)` for every audio file or manifest row in `paths` (`load_ctc_checkpoint`,
    `transcribe`; `separator` between tokens, " " for phones; `decoder` builds the decoder from
    the checkpoint's vocabulary, default greedy)."""
    model, vocabulary, normalize = load_ctc_checkpoint(checkpoint, step)
    files = read_inputs(paths)
    waveforms = [audio.load_audio(f, normalize_audio=normalize) for f in files]
    utterance_decoder = decoder(vocabulary) if decoder is not None else None
    return list(zip(files, transcribe(model, waveforms, vocabulary, batch_size, separator, utterance_decoder)))
