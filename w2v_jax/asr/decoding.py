"""CTC decoding: from logits to transcripts.

`greedy_decode` takes each frame's argmax, collapses repeats and drops blanks (`Vocabulary.decode`):
the text transformers' automatic-speech-recognition pipeline gives. Tokens are joined by the label
kind's separator (`SEPARATORS`: letters are joined, `|` being the space; phones are spaced as in
`.phn` files).

A `CTCDecoder` decodes one utterance's `[time, vocab]` logits into a `Transcript` (text, tokens and
the frame each token starts at): `GreedyDecoder` here, `beam_search.BeamSearchDecoder` with an
n-gram LM; `decode_batch` applies one to a batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from w2v_jax.data.vocabulary import Vocabulary

# Between the tokens of a transcript, by label kind.
SEPARATORS = {"ltr": "", "phn": " "}


def greedy_frame_ids(logits: jax.Array, logit_lengths: jax.Array) -> jax.Array:
    """Frame-wise argmax, as transformers' ASR pipeline takes it: `[batch, time]` int32, -1 in padding."""
    ids = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jnp.where(jnp.arange(logits.shape[1])[None, :] < logit_lengths[:, None], ids, -1)


def greedy_decode(
    logits: jax.Array, logit_lengths: jax.Array, vocabulary: Vocabulary, separator: str = ""
) -> list[str]:
    """Greedy CTC transcripts: the text transformers' ASR pipeline gives for each utterance.

    Args:
      logits: `[batch, time, vocab]`.
      logit_lengths: `[batch]` unpadded frames.
      vocabulary: maps ids to tokens (`Vocabulary.decode` collapses repeats and drops blanks).
      separator: between tokens ("": letters; " ": phones).
    """
    frame_ids = np.asarray(greedy_frame_ids(logits, logit_lengths))
    return [vocabulary.decode(row[: int(n)], separator) for row, n in zip(frame_ids, np.asarray(logit_lengths))]


@dataclasses.dataclass(frozen=True)
class Transcript:
    """One utterance's decoding: its text, the tokens it emitted and the frame each token starts at."""

    text: str
    tokens: tuple[str, ...]
    token_frames: tuple[int, ...]


class CTCDecoder(Protocol):
    """Decodes one utterance: `logits [time, vocab]` (or log-probabilities), of which the first
    `length` frames are real (all when None), -> its `Transcript`."""

    def decode(self, logits: np.ndarray, length: int | None = None) -> Transcript: ...


def frame_path_transcript(path: Sequence[int], vocabulary: Vocabulary, separator: str = "") -> Transcript:
    """The transcript of a per-frame token path (`[time]` ids, CTC: repeats collapse, blanks drop)."""
    tokens, frames = [], []
    previous = None
    for frame, token_id in enumerate(map(int, path)):
        if token_id != previous and token_id != vocabulary.pad_id:
            tokens.append(vocabulary.tokens[token_id] if 0 <= token_id < len(vocabulary) else vocabulary.unk_token)
            frames.append(frame)
        previous = token_id
    return Transcript(vocabulary.decode(path, separator), tuple(tokens), tuple(frames))


@dataclasses.dataclass(frozen=True)
class GreedyDecoder:
    """Greedy CTC decoding of one utterance at a time (`greedy_decode`'s text)."""

    vocabulary: Vocabulary
    separator: str = ""

    def decode(self, logits: np.ndarray, length: int | None = None) -> Transcript:
        logits = np.asarray(logits)[:length]
        return frame_path_transcript(np.argmax(logits, axis=-1), self.vocabulary, self.separator)


def decode_batch(decoder: CTCDecoder, logits: jax.Array, logit_lengths: jax.Array) -> list[str]:
    """The texts of a batch (`logits [batch, time, vocab]`, `logit_lengths [batch]`), one utterance at a time."""
    rows, lengths = np.asarray(logits, np.float32), np.asarray(logit_lengths)
    return [decoder.decode(row, int(n)).text for row, n in zip(rows, lengths)]
