"""Training batches: length buckets, seeded per-epoch shuffling, per-process shards, grain workers.

Every global batch is a pure function of (seed, global batch number): the epoch's plan (bucket
membership shuffled, cut into global batches of the bucket's size, batch order shuffled) comes
from ``seed`` and the epoch number, each row's crop offset from ``seed``, the batch number and the
row. So the iterator state is a single batch counter (plus the bad-file bookkeeping): restoring it
replays exactly what an uninterrupted run would have produced, with any number of grain workers,
and process ``shard_index`` of ``shard_count`` always reads its slice ``shard_index`` of the
``shard_count`` equal slices of each global batch, so processes never overlap. Nothing in the plan
depends on the number of processes: the position restored on another topology is the global one.

Batch sizes: ``batch_size * shard_count`` rows in every global batch, or, with a token budget
(``max_tokens > 0``, fairseq's ``max_tokens``), ``max_tokens // bucket_length`` rows rounded down to a
multiple of ``batch_multiple`` (the data-parallel size times the accumulation steps), so a global
batch holds at most ``max_tokens`` samples whatever its bucket: one batch shape (one compile) per bucket.

Shapes: lengths come from a fixed geometric set of ``num_buckets`` values between min_sample_size
and max_sample_size. Crop mode (fairseq's default) files each utterance under the largest bucket
length <= its length and crops every row to that length, so a batch is cropped to (at most) its
shortest utterance. Pad mode files it under the smallest bucket length >= its (max-cropped) length
and zero-pads, with ``attention_mask`` marking real samples.

Labelled batches (CTC fine-tuning, ``labels=`` a ``LabelSet``) are padded, never cropped: a
transcript covers its whole utterance. Utterances longer than max_sample_size are skipped
(``longer_than_max_sample_size``), as are rows the label set skips (empty transcripts, transcripts
needing more frames than the audio has); batches gain ``labels`` int32 ``[batch, label_length]``
padded with -100, ``label_length`` the longest usable transcript (one static shape per run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import weakref
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from w2v_jax.data import audio, skips
from w2v_jax.data.labels import LabelSet, pad_labels
from w2v_jax.data.manifest import Manifest, concatenate_manifests, load_manifest
from w2v_jax.data.planning import (
    EpochPlanner,
    assign_buckets,
    bucket_lengths,
    corpus_draws,
    corpus_probabilities,
    global_batch_sizes,
)

logger = logging.getLogger("w2v_jax.data")

STATE_FORMAT = "w2v_jax.data.TrainIterator/1"
# RNG stream tags, so epoch shuffles (planning.SHUFFLE_STREAM = 0) and crop offsets never share a seed sequence.
_CROP_STREAM = 1
_REPLACEMENT_STREAM = 2
# Labelled utterances longer than max_sample_size (a filter of the run, like min_sample_size).
LONGER_THAN_MAX_SAMPLE_SIZE = "longer_than_max_sample_size"
# A row whose file is unusable is refilled with another utterance of the same bucket, so batches keep
# their shape (a multi-process global batch needs every process's shard to be the same size); after
# this many unusable draws in a row the slot is left as an all-padding row (attention_mask 0).
MAX_REPLACEMENT_DRAWS = 8
# PipelineConfig fields that say how the global batches are split over processes and devices, not
# which batches there are: a state restores on another topology when only these differ (the global
# batch sizes are compared instead).
_TOPOLOGY_FIELDS = ("shard_index", "shard_count", "batch_size", "batch_multiple")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that decides which batches come out (and so must match on restore)."""

    batch_size: int
    seed: int
    max_sample_size: int = 250_000
    min_sample_size: int = 32_000
    pad: bool = False
    normalize: bool = True
    num_buckets: int = 8
    shard_index: int = 0
    shard_count: int = 1
    num_epochs: int | None = None
    label_length: int = 0  # labelled batches: label ids per row (0: no labels)
    max_tokens: int = 0  # samples per global batch (0: batch_size rows per process in every batch)
    batch_multiple: int = 1  # with max_tokens: global rows are a multiple of this (and of shard_count)
    corpus_weights: tuple[float, ...] = ()  # several corpora: sampling weights (empty: sizes**sampling_alpha)
    sampling_alpha: float = 0.0  # several corpora: probability proportional to size**alpha (0: natural)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.shard_count < 1 or not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count, got {self.shard_index}, {self.shard_count}")
        if self.min_sample_size < 0:
            raise ValueError(f"min_sample_size must be >= 0, got {self.min_sample_size}")
        if self.max_sample_size < max(self.min_sample_size, audio.RECEPTIVE_FIELD):
            raise ValueError(
                f"max_sample_size={self.max_sample_size} must be >= min_sample_size={self.min_sample_size} "
                f"and >= the {audio.RECEPTIVE_FIELD}-sample receptive field"
            )
        if self.num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {self.num_buckets}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 (0: fixed batch_size), got {self.max_tokens}")
        if self.max_tokens and (self.batch_multiple < 1 or self.batch_multiple % self.shard_count):
            raise ValueError(
                f"batch_multiple={self.batch_multiple} must be a positive multiple of shard_count={self.shard_count} "
                "(every process reads the same number of rows)"
            )
        if self.label_length and not self.pad:
            raise ValueError("labelled batches must be padded (pad=True): cropping would cut transcripts")


# What reading one row reports: (manifest index, skip reason or "", detail, resampled, downmixed).
RowOutcome = tuple[int, str, str, bool, bool]


def read_row(manifest: Manifest, index: int) -> tuple[np.ndarray | None, RowOutcome]:
    """Row ``index`` decoded (float32 [samples] at 16 kHz, not normalised; None when unusable) and
    what reading it found: the file's (or shard's) own errors, or a length other than the manifest's
    (a length written at the file's own rate is accepted)."""
    try:
        decoded = manifest.read(index)
    except audio.AudioError as error:
        return None, (index, error.reason, error.detail, False, False)
    conversions = (decoded.resampled, decoded.downmixed)
    detail = f"{decoded.source_rate} Hz, {decoded.source_channels} channel(s) -> 16 kHz mono"
    expected = int(manifest.num_samples[index])
    if decoded.resampled and decoded.source_frames == expected:
        detail += f" (the manifest's {expected} is its frame count at {decoded.source_rate} Hz)"
    elif decoded.samples.shape[0] != expected:
        mismatch = (
            f"the manifest says {expected} samples, the file has {decoded.samples.shape[0]} at 16 kHz "
            f"({decoded.source_frames} at its {decoded.source_rate} Hz)"
        )
        return None, (index, skips.LENGTH_MISMATCH, mismatch, *conversions)
    return decoded.samples, (index, "", detail, *conversions)


class _BatchDataset(grain.MapDataset):
    """Element i = this process's shard of global batch ``start + i``, decoded, cropped and padded.

    Elements also carry ``report``: one (manifest index, skip reason or "", detail, resampled,
    downmixed) tuple per file read, so the main process can count and log what the workers saw.
    """

    def __init__(
        self,
        manifest: Manifest,
        planner: EpochPlanner,
        buckets: np.ndarray,
        config: PipelineConfig,
        start: int,
        labels: LabelSet | None = None,
    ):
        super().__init__()
        self._labels = labels
        self._manifest = manifest
        self._planner = planner
        self._buckets = buckets
        self._config = config
        self._start = start

    def __len__(self) -> int:
        if self._config.num_epochs is None:
            return sys.maxsize
        return self._planner.batches_per_epoch * self._config.num_epochs - self._start

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._load_batch(self._start + index)

    def __str__(self) -> str:
        return f"_BatchDataset(start={self._start})"

    def _load_batch(self, number: int) -> dict[str, Any]:
        config = self._config
        bucket, members = self._planner.global_batch(number)
        length = int(self._buckets[bucket])
        rows = len(members) // config.shard_count
        first_row = config.shard_index * rows
        input_values = np.zeros((rows, length), np.float32)
        attention_mask = np.zeros((rows, length), np.int32)
        label_rows: list[np.ndarray] = [np.zeros(0, np.int32)] * rows
        report = []
        for slot, row in enumerate(range(first_row, first_row + rows)):
            samples, outcome = read_row(self._manifest, int(members[row]))
            report.append(outcome)
            if samples is None:
                # Replacements depend only on (seed, batch, row): the other rows never change.
                draws = np.random.default_rng([config.seed, _REPLACEMENT_STREAM, number, row])
                for _ in range(MAX_REPLACEMENT_DRAWS):
                    samples, outcome = read_row(self._manifest, int(draws.choice(self._planner.bucket_members(bucket))))
                    report.append(outcome)
                    if samples is not None:
                        break
                else:
                    continue  # all-padding row
            if config.normalize:
                samples = audio.normalize(samples)  # whole utterance, before cropping (as fairseq)
            keep = length if not config.pad else min(samples.shape[0], config.max_sample_size)
            rng = np.random.default_rng([config.seed, _CROP_STREAM, number, row])
            offset = int(rng.integers(0, samples.shape[0] - keep + 1))
            input_values[slot, :keep] = samples[offset : offset + keep]
            attention_mask[slot, :keep] = 1
            if self._labels is not None:
                ids = self._labels.encode(outcome[0])  # the row read, replacements included
                assert isinstance(ids, np.ndarray)  # the plan holds labelled rows alone (`usable_indices`)
                label_rows[slot] = ids
        batch = {"input_values": input_values, "attention_mask": attention_mask, "report": tuple(report)}
        if self._labels is not None:
            batch["labels"] = pad_labels(label_rows, config.label_length)
        return batch


def _close_grain(holder: dict[str, Any]) -> None:
    if holder["iterator"] is not None:
        holder["iterator"].close()
        holder["iterator"] = None


class TrainIterator:
    """Yields {"input_values": float32 [rows, S], "attention_mask": int32 [rows, S]} forever (or for
    num_epochs).

    S is one of ``bucket_lengths``; rows is this process's share of the bucket's global batch
    (``global_batch_sizes``: the same in every bucket unless a token budget sets them). A row whose
    file turns out unusable is refilled with another utterance of its bucket (see
    MAX_REPLACEMENT_DRAWS); the other rows are unaffected. Checkpoint with get_state() (a
    JSON-serialisable dict) and set_state(), or restore_global() with every process's state;
    per-reason bad-file counts in skip_counts(), conversions in conversion_counts(), a one-line
    summary() for the end of the run. close() stops the workers (also at garbage collection and
    interpreter exit).
    """

    def __init__(
        self,
        manifest: Manifest,
        config: PipelineConfig,
        *,
        num_workers: int,
        strict: bool,
        max_skip_fraction: float,
        labels: LabelSet | None = None,
        corpora: Sequence[tuple[str, int]] = (),
    ):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if (labels is not None) != (config.label_length > 0):
            raise ValueError("a LabelSet and config.label_length > 0 go together")
        if labels is not None and len(labels) != len(manifest):
            raise ValueError(f"the label set has {len(labels)} rows, the manifest {manifest.source} {len(manifest)}")
        self.labels = labels
        self.manifest = manifest
        self.config = config
        self.num_workers = num_workers
        self.buckets = bucket_lengths(
            config.min_sample_size, config.max_sample_size, config.num_buckets, pad=config.pad
        )
        self._tracker = skips.SkipTracker(
            len(manifest),
            lambda i: str(manifest.file_path(i)),
            strict=strict,
            max_skip_fraction=max_skip_fraction,
        )
        self._fingerprint = manifest.fingerprint()
        self.lengths_16k = manifest.lengths_16k()  # int64 [num_files], rows at other rates converted
        self.global_batch_sizes = global_batch_sizes(
            self.buckets,
            batch_size=config.batch_size,
            shard_count=config.shard_count,
            max_tokens=config.max_tokens,
            batch_multiple=config.batch_multiple,
        )
        # Several corpora: (name, rows) each, their rows consecutive in the manifest.
        self.corpus_names = [name for name, _ in corpora]
        self._corpus_of = np.repeat(np.arange(len(corpora)), [rows for _, rows in corpora]).astype(np.int64)
        if corpora and len(self._corpus_of) != len(manifest):
            raise ValueError(f"the corpora have {len(self._corpus_of)} rows in all, the manifest {len(manifest)}")
        members = self._usable_members()
        self._planner = EpochPlanner(members, self.global_batch_sizes, config.seed, self._corpus_strata(members))
        self._corpus_rows = np.zeros(len(corpora), np.int64)  # global rows planned so far, per corpus
        self._next_batch = 0
        # The grain iterator lives in a holder that a finalizer closes at garbage collection or interpreter
        # exit, whichever comes first: grain's own cleanup fails once module teardown has begun.
        self._grain: dict[str, Any] = {"iterator": None}
        weakref.finalize(self, _close_grain, self._grain)

    def _usable_members(self) -> list[np.ndarray]:
        """Records files known bad from the manifest alone, returns the rest grouped by bucket (by
        their 16 kHz lengths: a row written at its file's own rate is converted from the header)."""
        config, lengths = self.config, self.lengths_16k
        usable = np.ones(len(lengths), bool)
        for row, (reason, detail) in sorted(self.manifest.known_bad.items()):
            self._tracker.record(row, reason=reason, detail=detail)
            usable[row] = False
        too_short = [
            (lengths == 0, skips.EMPTY, "the manifest length is 0"),
            (
                (lengths > 0) & (lengths < audio.RECEPTIVE_FIELD),
                skips.SHORTER_THAN_RECEPTIVE_FIELD,
                f"the manifest length is < {audio.RECEPTIVE_FIELD} samples",
            ),
            (
                (lengths >= audio.RECEPTIVE_FIELD) & (lengths < config.min_sample_size),
                skips.SHORTER_THAN_MIN_SAMPLE_SIZE,
                f"the manifest length is < min_sample_size={config.min_sample_size}",
            ),
        ]
        for selected, reason, detail in too_short:
            for index in np.flatnonzero(selected & usable):
                self._tracker.record(int(index), reason=reason, detail=f"{detail} ({lengths[index]})")
            usable &= ~selected
        if self.labels is not None:
            too_long = usable & (lengths > config.max_sample_size)
            for index in np.flatnonzero(too_long):
                logger.warning(
                    "skipping %s: %s (%d samples; labelled audio is never cropped)",
                    self.manifest.file_path(int(index)),
                    LONGER_THAN_MAX_SAMPLE_SIZE,
                    lengths[index],
                )
            self._num_too_long = int(too_long.sum())
            usable &= ~too_long
            label_usable = np.zeros(len(lengths), bool)
            label_usable[self.labels.usable_indices()] = True
            usable &= label_usable  # the label set logged and counts its own skips
        self.num_usable = int(usable.sum())  # utterances a batch may read
        bucket_of = assign_buckets(lengths, self.buckets, pad=config.pad, max_sample_size=config.max_sample_size)
        members = [np.flatnonzero(usable & (bucket_of == b)) for b in range(len(self.buckets))]
        sizes = self.global_batch_sizes.tolist()
        batches = sum(len(m) // size for m, size in zip(members, sizes))
        if batches == 0:
            raise ValueError(
                f"{self.manifest.source}: no length bucket holds a full global batch of "
                f"{sizes[0] if len(set(sizes)) == 1 else sizes} usable utterances (bucket sizes "
                f"{[len(m) for m in members]} for lengths {self.buckets.tolist()}); lower the batch size (or "
                "max_tokens) or num_buckets"
            )
        unused = sum(len(m) for m, size in zip(members, sizes) if len(m) < size)
        if unused:
            logger.warning(
                "%d utterances sit in buckets with fewer than one global batch (%s rows) and are never "
                "used; lower num_buckets to use them",
                unused,
                sizes,
            )
        logger.info(
            "%s: %d usable utterances, %d global batches per epoch, %s",
            self.manifest.source,
            int(usable.sum()),
            batches,
            self.describe_batches(),
        )
        return members

    def _corpus_strata(self, members: list[np.ndarray]) -> list[list[tuple[np.ndarray, int]]] | None:
        """Per bucket, each corpus's members and how many an epoch draws: every corpus's buckets
        scaled by one factor, so that its share of an epoch is its sampling probability."""
        if len(self.corpus_names) < 2:
            return None
        config = self.config
        usable = np.concatenate(members)
        sizes = np.bincount(self._corpus_of[usable], minlength=len(self.corpus_names))
        if not sizes.all():
            empty = [n for n, size in zip(self.corpus_names, sizes) if not size]
            raise ValueError(f"corpora without usable utterances: {empty}")
        self.corpus_probabilities = corpus_probabilities(sizes, config.corpus_weights, config.sampling_alpha)
        counts = np.stack([np.bincount(self._corpus_of[m], minlength=len(sizes)) for m in members])
        draws = corpus_draws(counts, self.corpus_probabilities, self.global_batch_sizes, self.corpus_names)
        strata = [
            [(bucket_members[self._corpus_of[bucket_members] == i], int(n)) for i, n in enumerate(drawn)]
            for bucket_members, drawn in zip(members, draws.tolist())
        ]
        drawn = draws.sum(axis=0)
        logger.info(
            "corpora sampled %s",
            ", ".join(
                f"{name}: {size} utterances, p={p:.3f}, {n} drawn per epoch ({n / drawn.sum():.3f})"
                for name, size, p, n in zip(
                    self.corpus_names, sizes.tolist(), self.corpus_probabilities, drawn.tolist()
                )
            ),
        )
        return strata

    def corpus_shares(self) -> dict[str, float]:
        """Share of the rows planned so far that came from each corpus (empty with one corpus)."""
        total = max(int(self._corpus_rows.sum()), 1)
        return {name: float(rows) / total for name, rows in zip(self.corpus_names, self._corpus_rows.tolist())}

    def describe_batches(self) -> str:
        """The batch sizes in words: fixed, or the token budget's rows per bucket length."""
        lengths = self.buckets.tolist()
        if self.config.max_tokens == 0:
            return f"{int(self.global_batch_sizes[0])} rows per global batch, lengths {lengths}"
        per_bucket = ", ".join(f"{n} x {length}" for n, length in zip(self.global_batch_sizes.tolist(), lengths))
        return (
            f"token budget max_tokens={self.config.max_tokens}: global batches (rows x samples) {per_bucket}; "
            f"one compile per bucket"
        )

    def rows_for_length(self, length: int) -> int:
        """Rows of a global batch whose samples are ``length`` long (a bucket length)."""
        matches = np.flatnonzero(self.buckets == length)
        if len(matches) != 1:
            raise ValueError(f"{length} samples is not one of the bucket lengths {self.buckets.tolist()}")
        return int(self.global_batch_sizes[matches[0]])

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per epoch (the same every epoch)."""
        return self._planner.batches_per_epoch

    @property
    def next_batch(self) -> int:
        """Number of the next global batch (0-based, counted over all epochs)."""
        return self._next_batch

    @property
    def epoch(self) -> int:
        """Epoch of the next batch (0-based)."""
        return self._next_batch // self._planner.batches_per_epoch

    def planned_files(self, batch_number: int) -> np.ndarray:
        """Manifest indices this process's rows of global batch ``batch_number`` are planned to read
        (before replacing unusable files): int64 [rows]. For tests and debugging a batch."""
        return self.planned_batch(batch_number)[1]

    def planned_batch(self, batch_number: int) -> tuple[int, np.ndarray]:
        """(length in samples, ``planned_files``) of global batch ``batch_number``, read from the plan
        alone (nothing is decoded): what batching reports measure."""
        bucket, members = self._planner.global_batch(batch_number)
        rows = len(members) // self.config.shard_count
        return int(self.buckets[bucket]), members[self.config.shard_index * rows : (self.config.shard_index + 1) * rows]

    def _grain_iterator(self):
        if self._grain["iterator"] is None:
            dataset = _BatchDataset(
                self.manifest, self._planner, self.buckets, self.config, self._next_batch, self.labels
            )
            # Elements are whole batches: a short buffer is enough, and a long one costs memory.
            dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
            if self.num_workers > 0:
                # grain reads absl flags when it starts workers; programs that don't use absl never
                # parse them, so settle them to their defaults (a no-op under absl.app.run).
                if not flags.FLAGS.is_parsed():
                    flags.FLAGS.mark_as_parsed()
                dataset = dataset.mp_prefetch(
                    grain.MultiprocessingOptions(num_workers=self.num_workers, per_worker_buffer_size=2)
                )
            self._grain["iterator"] = iter(dataset)
        return self._grain["iterator"]

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        element = next(self._grain_iterator())
        if self.corpus_names:
            planned = self._planner.global_batch(self._next_batch)[1]
            self._corpus_rows += np.bincount(self._corpus_of[planned], minlength=len(self.corpus_names))
        self._next_batch += 1
        for index, reason, detail, resampled, downmixed in element["report"]:
            self._tracker.record(index, reason=reason or None, detail=detail, resampled=resampled, downmixed=downmixed)
        # Workers hand arrays over in shared memory; plain copies let grain free each segment now
        # rather than whenever (or, at interpreter exit, after) the caller drops the batch.
        return {key: np.array(value) for key, value in element.items() if key != "report"}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: the next global batch, the config and manifest it belongs to,
        and the bad-file bookkeeping (so counts continue after a restore)."""
        return {
            "format": STATE_FORMAT,
            "next_batch": self._next_batch,
            "epoch": self.epoch,
            "manifest_fingerprint": self._fingerprint,
            "num_files": len(self.manifest),
            "config": dataclasses.asdict(self.config),
            "global_batch_sizes": self.global_batch_sizes.tolist(),
            "corpus_rows": self._corpus_rows.tolist(),
            "file_status": self._tracker.state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from ``state``; refuses a state from another manifest or batch configuration."""
        self.restore_global([state] * self.config.shard_count)

    def restore_global(self, states: Sequence[dict[str, Any]]) -> None:
        """Continues from the states of every process of a run on any number of processes.

        The position is global (the next global batch, the same in every state), so a run on
        another number of processes continues with the batches an uninterrupted run on this one
        would read. This process takes over the bad-file bookkeeping of the old processes ``j`` with
        ``j % shard_count == shard_index``, so the counts summed over processes carry over. Refuses
        states of another manifest, another batch configuration or another global batch.
        """
        for state in states:
            self._check_compatible(state)
        positions = {int(state["next_batch"]) for state in states}
        if len(positions) != 1:
            raise ValueError(f"the processes' data states disagree on the next global batch: {sorted(positions)}")
        mine = [
            s["file_status"] for j, s in enumerate(states) if j % self.config.shard_count == self.config.shard_index
        ]
        self._tracker.set_state(skips.merge_states(mine, len(self.manifest)))
        self.close()
        self._next_batch = positions.pop()
        self._corpus_rows = np.asarray(states[0].get("corpus_rows", [0] * len(self.corpus_names)), np.int64)

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state: format={state.get('format')!r}")
        if state["manifest_fingerprint"] != self._fingerprint:
            raise ValueError(
                f"the manifest {self.manifest.source} changed since this state was saved "
                f"({state['num_files']} files then, {len(self.manifest)} now; fingerprint "
                f"{state['manifest_fingerprint'][:12]} then, {self._fingerprint[:12]} now): "
                "resuming would not replay the same batches"
            )
        saved = state["config"]
        then_sizes = state.get("global_batch_sizes", [saved["batch_size"] * saved["shard_count"]] * len(self.buckets))
        if then_sizes != self.global_batch_sizes.tolist():
            raise ValueError(
                f"the global batch changed since this state was saved (rows per bucket {then_sizes} then, "
                f"{self.global_batch_sizes.tolist()} now, for lengths {self.buckets.tolist()}): a resume keeps the "
                "global batch; on another device or process count choose data.max_tokens (or train.batch_size) "
                "that gives the same rows"
            )
        # As JSON holds them (tuples as lists), with the fields older states lack.
        saved = {"max_tokens": 0, "corpus_weights": [], "sampling_alpha": 0.0} | json.loads(json.dumps(saved))
        current = json.loads(json.dumps(dataclasses.asdict(self.config)))  # tuples as the state's lists
        changed = {k: (saved.get(k), v) for k, v in current.items() if k not in _TOPOLOGY_FIELDS and saved.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {then!r} then, {now!r} now" for k, (then, now) in changed.items())
            raise ValueError(f"the input pipeline's configuration changed since this state was saved ({details})")

    def skip_counts(self) -> dict[str, int]:
        """Distinct skipped files per reason (every reason that applies present, zeros included); with
        labels also the label set's reasons."""
        counts = self._tracker.skip_counts()
        if self.labels is None:
            return counts
        return counts | {LONGER_THAN_MAX_SAMPLE_SIZE: self._num_too_long} | self.labels.skip_counts()

    def conversion_counts(self) -> dict[str, int]:
        """Distinct files resampled to 16 kHz / down-mixed to mono."""
        return self._tracker.conversion_counts()

    def summary(self) -> str:
        """One line: files seen, skipped per reason, converted."""
        return self._tracker.summary()

    def close(self) -> None:
        """Stops prefetching and worker processes; iteration may continue later (they restart)."""
        _close_grain(self._grain)

    def __enter__(self) -> TrainIterator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def make_train_iterator(
    manifest: str | os.PathLike | Manifest | list[str | os.PathLike] | tuple[str | os.PathLike, ...],
    *,
    batch_size: int,
    seed: int,
    max_sample_size: int = 250_000,
    min_sample_size: int = 32_000,
    pad: bool = False,
    normalize: bool = True,
    num_workers: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
    max_skip_fraction: float = 0.05,
    strict: bool = False,
    num_epochs: int | None = None,
    num_buckets: int = 8,
    allow_outside_root: bool = False,
    labels: LabelSet | None = None,
    max_tokens: int = 0,
    batch_multiple: int = 1,
    corpus_weights: Sequence[float] = (),
    sampling_alpha: float = 0.0,
) -> TrainIterator:
    """Training batches from a TSV manifest, a shard set (`shards`), a folder of audio files, or a ``Manifest``.

    batch_size: rows per process; each global batch has batch_size * shard_count rows and this
    process reads rows [shard_index * batch_size, (shard_index + 1) * batch_size).
    pad: False crops each batch to one bucket length <= its shortest utterance (fairseq); True
    zero-pads to a bucket length with attention_mask. num_workers: grain worker processes (0 loads
    in background threads of this process). max_skip_fraction / strict: see ``skips``.
    num_epochs: None repeats forever. allow_outside_root: accept absolute or ``..`` manifest paths.
    labels: a ``LabelSet`` of the same manifest: batches gain ``labels`` (module docstring); needs pad.
    max_tokens: a token budget, samples per global batch (0: fixed batch_size); batch_multiple: its
    global rows are rounded down to a multiple of this (a multiple of shard_count).
    Several corpora: ``manifest`` a list of manifests (or folders); each epoch draws from each with
    probability proportional to ``corpus_weights`` or to its size**``sampling_alpha`` (XLS-R; 0:
    natural proportions), a corpus above its share of the epoch being subsampled, one below it
    repeated (``corpus_shares()`` says what was read).
    """
    config = PipelineConfig(
        batch_size=batch_size,
        seed=seed,
        max_sample_size=max_sample_size,
        min_sample_size=min_sample_size,
        pad=pad,
        normalize=normalize,
        num_buckets=num_buckets,
        shard_index=shard_index,
        shard_count=shard_count,
        num_epochs=num_epochs,
        max_tokens=max_tokens,
        batch_multiple=batch_multiple,
        corpus_weights=tuple(float(w) for w in corpus_weights),
        sampling_alpha=float(sampling_alpha),
        label_length=0 if labels is None else max(len(labels.encode(int(i))) for i in labels.usable_indices()),
    )
    corpora: Sequence[tuple[str, int]] = ()
    if isinstance(manifest, list | tuple):
        parts = [load_manifest(m, allow_outside_root=allow_outside_root) for m in manifest]
        corpora = [(corpus_name(str(m), i), len(part)) for i, (m, part) in enumerate(zip(manifest, parts))]
        manifest = concatenate_manifests(parts)
    elif not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest, allow_outside_root=allow_outside_root)
    return TrainIterator(
        manifest,
        config,
        num_workers=num_workers,
        strict=strict,
        max_skip_fraction=max_skip_fraction,
        labels=labels,
        corpora=corpora,
    )


def corpus_name(manifest: str, index: int) -> str:
    """A corpus's name in the metrics: its manifest's file name without the extension, or its folder's
    name, with the index when that is not a plain word (``data_share_<name>``)."""
    stem = os.path.splitext(os.path.basename(os.path.normpath(manifest)))[0]
    return stem if stem.replace("_", "").replace("-", "").isalnum() else f"corpus{index}"
