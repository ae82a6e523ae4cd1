"""CTC forced alignment: the most likely frame-level path of a known transcript, and its time segments.

`forced_align` is the Viterbi recursion over the CTC lattice (the transcript with a blank before,
between and after its tokens: states `2 * labels + 1`; a state stays, moves to the next one, or
skips the blank between two different tokens), batched and jitted. It takes the same decisions as
`torchaudio.functional.forced_align` (ties: a skip only when strictly better than both other moves,
a move only when strictly better than staying; the path ends on the last token unless the final
blank is strictly better), so both give the same path and the same per-frame scores (the log
probability of each frame's label). `forced_align_from_scratch` is its NumPy oracle.

`token_segments` merges a path into the transcript's tokens (first and one-past-last frame, mean
frame probability as the score, as torchaudio's `merge_tokens` of `exp(scores)`), `word_segments`
groups letters into words at the word delimiter; `Segment.seconds` puts them on the 20 ms frame grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from w2v_jax.data.vocabulary import Vocabulary

# Back pointers: how many states back the best predecessor is.
_STAY, _NEXT, _SKIP = 0, 1, 2


def check_alignable(input_lengths: np.ndarray, targets: np.ndarray, target_lengths: np.ndarray) -> None:
    """ValueError naming the first utterance whose transcript needs more frames than it has (each token
    one frame, a blank between equal neighbours), as torchaudio refuses it."""
    for index, (frames, row, n) in enumerate(zip(input_lengths, targets, target_lengths)):
        row = np.asarray(row[: int(n)])
        needed = int(n) + int(np.sum(row[1:] == row[:-1]))
        if needed > int(frames):
            raise ValueError(f"utterance {index}: its {int(n)} tokens need {needed} frames, it has {int(frames)}")


def _align_one(log_probs: jax.Array, length: jax.Array, targets: jax.Array, target_length: jax.Array, blank: int):
    """One utterance: `[time, vocab]`, `[]`, `[labels]`, `[]` -> `[time]` token ids (-1 after `length`)."""
    num_states = 2 * targets.shape[0] + 1
    states = jnp.arange(num_states)
    token = jnp.where(states % 2 == 0, blank, targets[jnp.minimum(states // 2, targets.shape[0] - 1)])
    previous_token = targets[jnp.clip(states // 2 - 1, 0, None)]
    can_skip = (states % 2 == 1) & (states > 1) & (token != previous_token)
    real = states < 2 * target_length + 1
    emissions = jnp.where(real[None, :], log_probs[:, token], -jnp.inf)  # [time, states]
    alpha0 = jnp.where(states < 2, emissions[0], -jnp.inf)

    def step(alpha, inputs):
        t, emission = inputs
        x0 = alpha
        x1 = jnp.concatenate([jnp.full((1,), -jnp.inf, alpha.dtype), alpha[:-1]])
        x2 = jnp.where(can_skip, jnp.concatenate([jnp.full((2,), -jnp.inf, alpha.dtype), alpha[:-2]]), -jnp.inf)
        skip = (x2 > x1) & (x2 > x0)
        move = ~skip & (x1 > x0)
        pointer = jnp.where(skip, _SKIP, jnp.where(move, _NEXT, _STAY)).astype(jnp.int8)
        best = jnp.where(skip, x2, jnp.where(move, x1, x0))
        inside = t < length
        return jnp.where(inside, best + emission, alpha), jnp.where(inside, pointer, _STAY)

    time = log_probs.shape[0]
    alpha, pointers = jax.lax.scan(step, alpha0, (jnp.arange(1, time), emissions[1:]))
    last = 2 * target_length  # the final blank; the last token is one before it
    end = jnp.where((target_length > 0) & ~(alpha[last] > alpha[jnp.maximum(last - 1, 0)]), last - 1, last)
    pointers = jnp.concatenate([jnp.zeros((1, num_states), jnp.int8), pointers])  # frame 0 has none

    def back(state, inputs):
        t, row = inputs
        label = jnp.where(t < length, token[state], -1)
        return state - row[state].astype(state.dtype), label

    _, path = jax.lax.scan(back, end.astype(jnp.int32), (jnp.arange(time), pointers), reverse=True)
    return path


@jax.jit
def _forced_align(log_probs, input_lengths, targets, target_lengths, blank):
    paths = jax.vmap(_align_one, in_axes=(0, 0, 0, 0, None))(log_probs, input_lengths, targets, target_lengths, blank)
    scores = jnp.take_along_axis(log_probs, jnp.maximum(paths, 0)[..., None], axis=-1)[..., 0]
    return paths, jnp.where(paths >= 0, scores, 0.0)


def forced_align(
    log_probs: jax.Array | np.ndarray,
    input_lengths: jax.Array | np.ndarray | Sequence[int],
    targets: jax.Array | np.ndarray,
    target_lengths: jax.Array | np.ndarray | Sequence[int],
    blank: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """The Viterbi CTC path of each transcript, batched (module docstring).

    Args:
      log_probs: `[batch, time, vocab]` log-softmax outputs.
      input_lengths: `[batch]` real frames.
      targets: `[batch, labels]` token ids (no blanks), any padding after `target_lengths`.
      target_lengths: `[batch]` real tokens.
      blank: the blank's id (our vocabularies' `<pad>`, 0).

    Returns:
      `(paths [batch, time] int32` each frame's token id, -1 after the real frames;
      `scores [batch, time]` float, each frame's log probability of its token, 0 after the real frames).

    Raises:
      ValueError on mismatched shapes, or a transcript longer than its frames allow (`check_alignable`).
    """
    log_probs = jnp.asarray(log_probs)
    targets = np.asarray(targets)
    input_lengths, target_lengths = np.asarray(input_lengths), np.asarray(target_lengths)
    batch = log_probs.shape[0]
    if log_probs.ndim != 3 or targets.ndim != 2 or targets.shape[0] != batch:
        raise ValueError(
            f"log_probs must be [batch, time, vocab] and targets [batch, labels], "
            f"got {log_probs.shape} and {targets.shape}"
        )
    if input_lengths.shape != (batch,) or target_lengths.shape != (batch,):
        raise ValueError(
            f"input_lengths and target_lengths must be [{batch}], got {input_lengths.shape}, {target_lengths.shape}"
        )
    if np.any(input_lengths > log_probs.shape[1]) or np.any(target_lengths > targets.shape[1]):
        raise ValueError("input_lengths and target_lengths must not exceed log_probs' and targets' lengths")
    if not 0 <= blank < log_probs.shape[-1]:
        raise ValueError(f"blank must be in [0, {log_probs.shape[-1]}), got {blank}")
    check_alignable(input_lengths, targets, target_lengths)
    if targets.shape[1] == 0:
        targets = np.zeros((batch, 1), np.int32)  # one padded label keeps the state arrays non-empty
    return _forced_align(
        log_probs,
        jnp.asarray(input_lengths, jnp.int32),
        jnp.asarray(targets, jnp.int32),
        jnp.asarray(target_lengths, jnp.int32),
        blank,
    )


def forced_align_from_scratch(
    log_probs: np.ndarray, targets: Sequence[int], blank: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy oracle of `forced_align` on one utterance: `[time, vocab]`, `[labels]` ->
    (`[time]` token ids, `[time]` their log probabilities), the recursion written out with loops."""
    log_probs = np.asarray(log_probs, np.float64)
    targets = list(targets)
    time = log_probs.shape[0]
    labels = [blank]
    for t in targets:
        labels += [t, blank]
    num_states = len(labels)
    alpha = np.full(num_states, -np.inf)
    alpha[: min(2, num_states)] = [log_probs[0, labels[s]] for s in range(min(2, num_states))]
    pointers = np.zeros((time, num_states), np.int64)
    for t in range(1, time):
        new = np.full(num_states, -np.inf)
        for s in range(num_states):
            stay = alpha[s]
            move = alpha[s - 1] if s >= 1 else -np.inf
            skip = alpha[s - 2] if s % 2 == 1 and s > 1 and labels[s] != labels[s - 2] else -np.inf
            if skip > move and skip > stay:
                pointers[t, s], best = 2, skip
            elif move > stay:
                pointers[t, s], best = 1, move
            else:
                pointers[t, s], best = 0, stay
            new[s] = best + log_probs[t, labels[s]]
        alpha = new
    state = num_states - 1
    if num_states > 1 and not alpha[num_states - 1] > alpha[num_states - 2]:
        state = num_states - 2
    path = np.zeros(time, np.int64)
    for t in range(time - 1, -1, -1):
        path[t] = labels[state]
        state -= pointers[t, state]
    return path, log_probs[np.arange(time), path]


@dataclasses.dataclass(frozen=True)
class Segment:
    """A token (or word) of an alignment: frames `[start, end)`, `score` its mean frame probability."""

    token: str
    start: int
    end: int
    score: float

    def seconds(self, frame_seconds: float) -> dict[str, float | str]:
        """The JSON form: `{"token", "start", "end", "score"}`, times in seconds."""
        return {
            "token": self.token,
            "start": round(self.start * frame_seconds, 3),
            "end": round(self.end * frame_seconds, 3),
            "score": round(self.score, 4),
        }


def token_segments(path: np.ndarray, scores: np.ndarray, vocabulary: Vocabulary, blank: int) -> list[Segment]:
    """One `Segment` per token of an aligned transcript: consecutive frames of the same non-blank id
    (a blank between two equal tokens separates them). `path` and `scores` as one row of `forced_align`'s."""
    segments = []
    path = np.asarray(path)
    probabilities = np.exp(np.asarray(scores, np.float64))
    t = 0
    while t < len(path):
        if path[t] in (blank, -1):
            t += 1
            continue
        end = t
        while end < len(path) and path[end] == path[t]:
            end += 1
        token = vocabulary.tokens[int(path[t])]
        segments.append(Segment(token, t, end, float(probabilities[t:end].mean())))
        t = end
    return segments


def word_segments(letters: Sequence[Segment], delimiter: str) -> list[Segment]:
    """Letters grouped into words at `delimiter` (`|`): first letter's start, last letter's end,
    the score the mean of the letters' weighted by their frames."""
    words: list[Segment] = []
    current: list[Segment] = []
    for segment in [*letters, None]:
        if segment is None or segment.token == delimiter:
            if current:
                frames = np.asarray([s.end - s.start for s in current], np.float64)
                score = float(np.sum(frames * [s.score for s in current]) / frames.sum())
                words.append(Segment("".join(s.token for s in current), current[0].start, current[-1].end, score))
            current = []
        else:
            current.append(segment)
    return words
