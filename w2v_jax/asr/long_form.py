"""Recordings of any length: fixed-length chunks with overlapping strides, logits stitched, then decoded.

transformers' ASR pipeline algorithm (`chunk_length_s`, `stride_length_s`): chunks of `chunk`
samples start every `chunk - 2 * stride` samples; each chunk's logits for the `stride` samples on
either side (none before the first chunk, none after the last) are dropped, the rest concatenated
in order and decoded as one utterance. Here the chunk and the stride are whole numbers of the
model's frame stride (320 samples), so every chunk's frames sit on the recording's frame grid and
the kept frames tile the recording's frames exactly once (transformers rounds per chunk instead).

Every chunk runs at the same width (the last one zero-padded with an attention mask, so group-norm
models use the masked group norm), `batch_size` chunks per forward call: one compiled shape, and
memory bounded by the batch, whatever the recording's length. The stitched logits go to any
`decoding.CTCDecoder` (greedy, or beam search with an LM) as one utterance's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

# `(input_values [batch, samples], attention_mask [batch, samples] | None) -> logits [batch, frames, vocab]`.
Forward = Callable[[np.ndarray, np.ndarray | None], jax.Array]

DEFAULT_CHUNK_S = 20.0
# transformers' default stride: a sixth of the chunk on each side.
DEFAULT_STRIDE_FRACTION = 1 / 6


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk of a recording.

    Attributes:
      start: first sample (a multiple of the frame stride).
      num_samples: real samples (the chunk width, or fewer for the last chunk).
      keep: `(begin, end)` frames of the chunk's logits kept, relative to its first frame.
    """

    start: int
    num_samples: int
    keep: tuple[int, int]


def chunk_samples(
    chunk_s: float, stride_s: float | None, *, sample_rate: int, frame_stride: int, receptive_field: int
) -> tuple[int, int]:
    """`(chunk, stride)` in samples, rounded to whole frames; `stride_s=None` is a sixth of the chunk.

    ValueError when the strides leave nothing of a chunk, or are shorter than one frame's receptive
    field (the kept frames would need audio the chunk does not have).
    """
    if stride_s is None:
        stride_s = chunk_s * DEFAULT_STRIDE_FRACTION
    chunk = int(round(chunk_s * sample_rate / frame_stride)) * frame_stride
    stride = int(round(stride_s * sample_rate / frame_stride)) * frame_stride
    if stride < receptive_field:
        raise ValueError(f"stride_s={stride_s} is shorter than one frame's {receptive_field} samples")
    if chunk <= 2 * stride:
        raise ValueError(f"chunk_s={chunk_s} must be longer than twice stride_s={stride_s}")
    return chunk, stride


def plan_chunks(
    num_samples: int, chunk: int, stride: int, *, frame_stride: int, num_frames: Callable[[int], int]
) -> list[Chunk]:
    """The chunks of a recording of `num_samples` samples and the frames each one keeps.

    The kept frames, offset by `start // frame_stride`, are consecutive ranges covering
    `[0, num_frames(num_samples))` exactly once. `chunk` and `stride` as `chunk_samples` returns them.
    """
    step = chunk - 2 * stride
    starts = [0]
    while starts[-1] + chunk < num_samples:
        starts.append(starts[-1] + step)
    total = int(num_frames(num_samples))
    # First kept frame of each chunk on the recording's grid; the next chunk's is where this one stops.
    firsts = [0] + [s // frame_stride + stride // frame_stride for s in starts[1:]] + [total]
    return [
        Chunk(
            start,
            min(chunk, num_samples - start),
            (firsts[i] - start // frame_stride, firsts[i + 1] - start // frame_stride),
        )
        for i, start in enumerate(starts)
    ]


def stitched_logits(
    forward: Forward,
    waveform: np.ndarray,
    *,
    chunk: int,
    stride: int,
    batch_size: int,
    frame_stride: int,
    num_frames: Callable[[int], int],
    receptive_field: int,
) -> np.ndarray:
    """A recording's logits `[num_frames(samples), vocab]` from its chunks' (`plan_chunks`).

    Args:
      forward: the model on `[batch_size, chunk]` inputs with an attention mask.
      waveform: float32 `[samples]`, any length of at least the receptive field.
      chunk, stride: samples (`chunk_samples`).
      batch_size: chunks per forward call (filler rows complete the last call).
      frame_stride, num_frames, receptive_field: the model's (320, its `num_frames`, 400).
    """
    chunks = plan_chunks(len(waveform), chunk, stride, frame_stride=frame_stride, num_frames=num_frames)
    pieces = []
    for begin in range(0, len(chunks), batch_size):
        group = chunks[begin : begin + batch_size]
        inputs = np.zeros((batch_size, chunk), np.float32)
        mask = np.zeros((batch_size, chunk), np.int32)
        mask[len(group) :, :receptive_field] = 1  # filler rows: any valid length
        for row, c in enumerate(group):
            inputs[row, : c.num_samples] = waveform[c.start : c.start + c.num_samples]
            mask[row, : c.num_samples] = 1
        logits = np.asarray(forward(inputs, mask))
        for row, c in enumerate(group):
            if c.keep[1] > logits.shape[1]:
                raise ValueError(f"a chunk of {chunk} samples has {logits.shape[1]} frames, {c.keep[1]} are needed")
            pieces.append(logits[row, c.keep[0] : c.keep[1]])
    return np.concatenate(pieces, axis=0)
