"""CTC decoding: from logits to transcripts.

`greedy_decode` takes each frame's argmax, collapses repeats and drops blanks (`Vocabulary.decode`):
the text transformers' automatic-speech-recognition pipeline gives. Tokens are joined by the label
kind's separator (`SEPARATORS`: letters are joined, `|` being the space; phones are spaced as in
`.phn` files).
"""

from __future__ import annotations

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
