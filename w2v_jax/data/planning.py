"""The batch plan: which utterances form each global batch, as a function of the seed and the batch number.

Lengths come from a fixed geometric set (`bucket_lengths`); each utterance is filed under one
(`assign_buckets`); each bucket's global batch has a fixed number of rows (`global_batch_sizes`:
one count, or a token budget's rows per length). `EpochPlanner` shuffles every bucket per epoch,
cuts it into global batches and shuffles their order; with several corpora it first draws each
corpus's share of the epoch (`corpus_probabilities`, `corpus_draws`). Nothing here reads audio or depends on the
number of processes: the input pipeline (`pipeline`) reads each process's slice of these batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from w2v_jax.data import audio

# The RNG stream tag of epoch shuffles (the pipeline's crop offsets and replacements use others).
SHUFFLE_STREAM = 0


def geometric_lengths(low: int, high: int, count: int) -> np.ndarray:
    """A ladder of lengths: int64 [<= count], `count` steps a constant factor apart from `low` to
    `high` (both exact), rounded to whole samples, repeats dropped. The batch buckets
    (`bucket_lengths`) and `representations.BUCKET_LADDER` are both such ladders."""
    lengths = np.round(np.geomspace(low, high, count)).astype(np.int64)
    lengths[0], lengths[-1] = low, high  # exact ends despite float rounding
    return np.unique(lengths)


def bucket_lengths(min_sample_size: int, max_sample_size: int, num_buckets: int, *, pad: bool) -> np.ndarray:
    """The fixed set of batch lengths: int64 [<= num_buckets], geometric, from the shortest usable
    length (min_sample_size, at least the receptive field) up to max_sample_size inclusive.

    A single bucket is the one length every usable utterance fits: the shortest usable length when
    cropping, max_sample_size when padding.
    """
    low = max(min_sample_size, audio.RECEPTIVE_FIELD)
    if num_buckets == 1 or low == max_sample_size:
        return np.asarray([max_sample_size if pad else low], np.int64)
    return geometric_lengths(low, max_sample_size, num_buckets)


def assign_buckets(num_samples: np.ndarray, buckets: np.ndarray, *, pad: bool, max_sample_size: int) -> np.ndarray:
    """Bucket index per utterance, int64 [num_files]; -1 where none fits (shorter than buckets[0]).

    Crop mode: the largest bucket length <= the length (the crop target). Pad mode: the smallest
    bucket length >= min(length, max_sample_size) (the padded shape).
    """
    clipped = np.minimum(num_samples, max_sample_size)
    if pad:
        index = np.searchsorted(buckets, clipped, side="left")
        return np.where(clipped >= buckets[0], index, -1)
    return np.searchsorted(buckets, clipped, side="right") - 1


def global_batch_sizes(
    buckets: np.ndarray, *, batch_size: int, shard_count: int, max_tokens: int, batch_multiple: int
) -> np.ndarray:
    """Rows of a global batch per bucket, int64 [num_buckets].

    Fixed (max_tokens == 0): batch_size * shard_count everywhere. Token budget: ``max_tokens //
    length`` rows rounded down to a multiple of ``batch_multiple``; a ValueError when the longest
    bucket would get none (the budget must hold batch_multiple rows of it).
    """
    if max_tokens == 0:
        return np.full(len(buckets), batch_size * shard_count, np.int64)
    rows = (max_tokens // buckets) // batch_multiple * batch_multiple
    if rows.min() < 1:
        needed = int(buckets.max()) * batch_multiple
        raise ValueError(
            f"data.max_tokens={max_tokens} holds no batch of {batch_multiple} rows (the data-parallel size times "
            f"the accumulation steps) of the longest bucket ({int(buckets.max())} samples): raise it to at least "
            f"{needed}"
        )
    return rows.astype(np.int64)


def _draw(rng: np.random.Generator, members: np.ndarray, count: int) -> np.ndarray:
    """`count` of `members` without repeats until all were drawn (a corpus sampled above its size
    repeats whole shuffles of itself): int64 [count]."""
    if count == 0:
        return members[:0]
    repeats = -(-count // len(members))
    return np.concatenate([rng.permutation(members) for _ in range(repeats)])[:count]


def corpus_probabilities(
    sizes: Sequence[int] | np.ndarray, weights: Sequence[float] = (), alpha: float = 0.0
) -> np.ndarray:
    """Sampling probability of each corpus, float64 [num_corpora]: proportional to ``weights`` when
    given, else to size**alpha (XLS-R's temperature sampling; alpha=1 or 0 (unset): each utterance
    once per epoch)."""
    rows = np.asarray(sizes, np.float64)
    if weights:
        if len(weights) != len(rows) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"train_weights {tuple(weights)} must be one non-negative weight per manifest ({len(rows)}), not all 0"
            )
        raw = np.asarray(weights, np.float64)
    else:
        if alpha < 0:
            raise ValueError(f"sampling_alpha must be >= 0 (0: natural proportions), got {alpha}")
        raw = rows ** (alpha or 1.0)
    return raw / raw.sum()


def _apportion(shares: np.ndarray, total: int) -> np.ndarray:
    """`total` split in whole numbers in proportion to `shares` (largest remainders, a tie to the larger
    share): int64 [len(shares)]."""
    exact = shares / shares.sum() * total
    whole = np.floor(exact).astype(np.int64)
    left = total - int(whole.sum())
    whole[np.lexsort((-shares, -(exact - whole)))[:left]] += 1
    return whole


def corpus_draws(
    counts: np.ndarray, probabilities: np.ndarray, batch_sizes: np.ndarray, names: Sequence[str]
) -> np.ndarray:
    """Utterances an epoch draws from each (bucket, corpus), int64 [num_buckets, num_corpora].

    counts: usable utterances per (bucket, corpus), int [num_buckets, num_corpora]; probabilities:
    each corpus's share of an epoch, float [num_corpora]; batch_sizes: rows of a global batch per
    bucket, int [num_buckets].

    An epoch draws as many utterances as there are: each corpus its share of them, spread over the
    buckets as its own lengths are. Each bucket then gives back its rows beyond a whole number of
    batches, taken from the corpora the most above their share at that point, so every bucket's draw
    is whole batches and each corpus's rows are within one global batch of its share of the epoch's
    rows. A corpus whose share comes to no row, or an epoch of no batch, is a ValueError naming it.
    """
    counts = np.asarray(counts, np.int64)
    per_corpus = _apportion(np.asarray(probabilities, np.float64), int(counts.sum()))
    draws = np.zeros_like(counts)
    for corpus, total in enumerate(per_corpus.tolist()):
        if total:
            draws[:, corpus] = _apportion(counts[:, corpus].astype(np.float64), total)
    rows = int(sum(d // b * b for d, b in zip(draws.sum(axis=1).tolist(), batch_sizes.tolist())))
    if rows == 0:
        raise ValueError(
            f"the corpora's draws per epoch ({draws.sum(axis=0).tolist()} utterances of {list(names)}) hold no full "
            f"global batch of {batch_sizes.tolist()} rows in any length bucket: lower the batch size (or max_tokens) "
            "or num_buckets"
        )
    target = np.asarray(probabilities, np.float64) * rows
    excess = draws.sum(axis=0) - target  # rows above each corpus's share, updated as buckets give back
    for bucket, size in enumerate(batch_sizes.tolist()):
        for _ in range(int(draws[bucket].sum()) % size):
            present = draws[bucket] > 0
            corpus = int(np.argmax(np.where(present, excess, -np.inf)))
            draws[bucket, corpus] -= 1
            excess[corpus] -= 1
    empty = [name for name, drawn in zip(names, draws.sum(axis=0).tolist()) if not drawn]
    if empty:
        shares = {name: float(p) for name, p in zip(names, probabilities)}
        raise ValueError(
            f"corpora {empty} get no utterance of an epoch of {rows} rows at sampling probabilities {shares}: raise "
            "their data.train_weights (or data.sampling_alpha) or drop them from data.train_manifests"
        )
    return draws


class EpochPlanner:
    """Global batches of one epoch: [num_batches] bucket ids and num_batches arrays of rows.

    members_per_bucket: manifest indices of the usable utterances of each bucket; batch_sizes: the
    rows of a global batch of each bucket. Each epoch shuffles every bucket, cuts it into full global
    batches (the remainder waits for another epoch's shuffle) and shuffles the batch order.
    """

    def __init__(
        self,
        members_per_bucket: list[np.ndarray],
        batch_sizes: np.ndarray,
        seed: int,
        strata: list[list[tuple[np.ndarray, int]]] | None = None,
    ):
        self._members = members_per_bucket
        self._batch_sizes = [int(b) for b in batch_sizes]
        self._seed = seed
        # Several corpora: per bucket, (one corpus's members, utterances drawn from them per epoch).
        self._strata = strata
        drawn = [len(m) for m in members_per_bucket] if strata is None else [sum(c for _, c in s) for s in strata]
        self.batches_per_epoch = sum(n // b for n, b in zip(drawn, self._batch_sizes))
        # One (epoch, plan) tuple, replaced whole: grain's reader threads may plan epochs concurrently.
        self._cache: tuple[int, tuple[np.ndarray, list[np.ndarray]]] | None = None

    def epoch(self, epoch: int) -> tuple[np.ndarray, list[np.ndarray]]:
        cache = self._cache
        if cache is not None and cache[0] == epoch:
            return cache[1]
        rng = np.random.default_rng([self._seed, SHUFFLE_STREAM, epoch])
        ids: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for bucket, (members, size) in enumerate(zip(self._members, self._batch_sizes)):
            if self._strata is not None:
                members = np.concatenate([_draw(rng, m, c) for m, c in self._strata[bucket]] + [members[:0]])
            count = len(members) // size
            shuffled = rng.permutation(members)[: count * size]
            ids.append(np.full(count, bucket, np.int64))
            rows.extend(shuffled.reshape(count, size))
        order = rng.permutation(self.batches_per_epoch)
        plan = (np.concatenate(ids)[order], [rows[i] for i in order])
        self._cache = (epoch, plan)
        return plan

    def bucket_members(self, bucket: int) -> np.ndarray:
        return self._members[bucket]

    def global_batch(self, number: int) -> tuple[int, np.ndarray]:
        """(bucket id, manifest indices [rows]) of global batch ``number`` (0-based, all epochs)."""
        ids, rows = self.epoch(number // self.batches_per_epoch)
        position = number % self.batches_per_epoch
        return int(ids[position]), rows[position]
