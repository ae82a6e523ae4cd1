"""Bucketed, sharded, resumable batches and bad-input accounting (w2v_jax.data.pipeline, skips)."""

import json
import logging
import shutil

import chex
import numpy as np
import pytest
import soundfile

from w2v_jax.data import audio, bucket_lengths, make_train_iterator, manifest, pipeline, planning, skips, write_manifest
from w2v_jax.research import input_benchmark

MIN, MAX = 4_000, 8_000  # short crops keep the tests fast


def _signal(index: int, num_samples: int) -> np.ndarray:
    """Distinct, deterministic test audio per file index."""
    return (0.2 * np.random.default_rng(index).standard_normal(num_samples)).astype(np.float32)


def _corpus(folder, lengths, *, subtype="FLOAT") -> list[str]:
    """Writes one 16 kHz WAV per length, and a manifest with root '.'; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [f"u{i:03d}.wav" for i in range(len(lengths))]
    for i, (path, length) in enumerate(zip(paths, lengths)):
        soundfile.write(folder / path, _signal(i, length), 16_000, subtype=subtype)
    write_manifest(folder / "m.tsv", ".", paths, lengths)
    return paths


def _batches(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["input_values"], y["input_values"])
        np.testing.assert_array_equal(x["attention_mask"], y["attention_mask"])


def test_bucket_lengths():
    np.testing.assert_array_equal(bucket_lengths(32_000, 250_000, 8, pad=False)[[0, -1]], [32_000, 250_000])
    lengths = bucket_lengths(32_000, 250_000, 8, pad=True)
    assert len(lengths) == 8 and np.all(np.diff(lengths) > 0)
    np.testing.assert_allclose(lengths[1:] / lengths[:-1], (250_000 / 32_000) ** (1 / 7), rtol=1e-4)
    np.testing.assert_array_equal(bucket_lengths(0, 1000, 3, pad=False), [400, 632, 1000])  # receptive field floor
    np.testing.assert_array_equal(bucket_lengths(100, 9000, 1, pad=False), [400])
    np.testing.assert_array_equal(bucket_lengths(100, 9000, 1, pad=True), [9000])


def _geometric_buckets(low: int, high: int, count: int) -> list[int]:
    """The ladder in plain Python: step i of count is low * (high / low) ** (i / (count - 1)), rounded."""
    steps = [low, *(round(low * (high / low) ** (i / (count - 1))) for i in range(1, count - 1)), high]
    return sorted(set(steps))


@pytest.mark.parametrize("pad", [False, True])
def test_bucket_lengths_are_the_geometric_ladder_between_the_usable_lengths(pad):
    for low, high in ((0, 1000), (400, 401), (4000, 10_000), (32_000, 250_000), (16_000, 480_000)):
        for count in (2, 3, 4, 8, 30, 200):
            expected = _geometric_buckets(max(low, 400), high, count)
            np.testing.assert_array_equal(
                bucket_lengths(low, high, count, pad=pad), expected, err_msg=f"{low, high, count}"
            )


def test_crop_mode_shapes_and_crops(tmp_path):
    lengths = [4_000 + 500 * i for i in range(12)] + [20_000] * 4
    _corpus(tmp_path, lengths)
    buckets = bucket_lengths(MIN, MAX, 3, pad=False)
    iterator = make_train_iterator(
        tmp_path / "m.tsv",
        batch_size=4,
        seed=0,
        min_sample_size=MIN,
        max_sample_size=MAX,
        num_buckets=3,
        num_workers=0,
        normalize=False,
    )
    for number in range(3 * iterator.batches_per_epoch):
        files = iterator.planned_files(number)
        batch = next(iterator)
        chex.assert_shape(batch["input_values"], (4, None))
        chex.assert_type([batch["input_values"], batch["attention_mask"]], [np.float32, np.int32])
        width = batch["input_values"].shape[1]
        # The largest bucket length <= the shortest utterance of the batch (capped at max_sample_size).
        shortest = min(min(lengths[i] for i in files), MAX)
        assert width == buckets[buckets <= shortest].max()
        np.testing.assert_array_equal(batch["attention_mask"], 1)
        for row, index in zip(batch["input_values"], files):
            source = _signal(int(index), lengths[index])
            starts = [s for s in range(lengths[index] - width + 1) if source[s] == row[0]]
            assert any(np.array_equal(source[s : s + width], row) for s in starts)


def test_crop_offsets_are_drawn_per_row_and_batch(tmp_path):
    # Each row's crop offset is its own draw (seed, batch, row): rows of equal-length files in one
    # batch start at different offsets, spread over the whole file.
    length = 20_000
    _corpus(tmp_path, [length] * 8)
    iterator = make_train_iterator(
        tmp_path / "m.tsv",
        batch_size=4,
        seed=0,
        min_sample_size=MAX,
        max_sample_size=MAX,
        num_buckets=1,
        num_workers=0,
        normalize=False,
    )
    offsets = []
    for number in range(6):
        files = iterator.planned_files(number)
        batch = next(iterator)
        row_offsets = []
        for row, index in zip(batch["input_values"], files):
            source = _signal(int(index), length)
            (start,) = [s for s in range(length - MAX + 1) if np.array_equal(source[s : s + MAX], row)]
            row_offsets.append(start)
        assert len(set(row_offsets)) == 4, row_offsets
        offsets += row_offsets
    # 24 uniform draws in [0, 12000]: their spread is far from a constant offset.
    assert min(offsets) < 3_000 and max(offsets) > 9_000


def test_pad_mode_masks_normalisation_and_max_crop(tmp_path):
    lengths = [4_000, 4_300, 5_000, 5_900, 6_100, 7_000, 7_999, 8_000, 12_000, 30_000, 4_100, 6_500]
    _corpus(tmp_path, lengths)
    buckets = bucket_lengths(MIN, MAX, 4, pad=True)
    iterator = make_train_iterator(
        tmp_path / "m.tsv",
        batch_size=2,
        seed=3,
        min_sample_size=MIN,
        max_sample_size=MAX,
        num_buckets=4,
        pad=True,
        num_workers=0,
        num_epochs=1,
    )
    seen = []
    for number in range(iterator.batches_per_epoch):
        files = iterator.planned_files(number)
        batch = next(iterator)
        kept = [min(lengths[i], MAX) for i in files]
        assert batch["input_values"].shape[1] == buckets[buckets >= max(kept)].min()
        for row, mask, index, keep in zip(batch["input_values"], batch["attention_mask"], files, kept):
            np.testing.assert_array_equal(mask, np.arange(len(mask)) < keep)
            np.testing.assert_array_equal(row[keep:], 0.0)
            normalised = audio.normalize(_signal(int(index), lengths[index]))  # whole utterance, then crop
            if lengths[index] <= MAX:
                np.testing.assert_allclose(row[:keep], normalised, rtol=1e-6)
                assert abs(row[:keep].astype(np.float64).mean()) < 1e-5
                np.testing.assert_allclose(row[:keep].astype(np.float64).std(), 1.0, rtol=1e-4)
            else:
                offsets = range(lengths[index] - keep + 1)
                assert any(np.array_equal(normalised[s : s + keep], row[:keep]) for s in offsets)
        seen.extend(int(i) for i in files)
    assert len(seen) == len(set(seen))
    with pytest.raises(StopIteration):
        next(iterator)


def test_epochs_are_reshuffled_deterministically(tmp_path):
    _corpus(tmp_path, [MAX] * 16)
    common = dict(batch_size=4, min_sample_size=MIN, max_sample_size=MAX, num_workers=0)
    a, b, c = (make_train_iterator(tmp_path / "m.tsv", seed=seed, **common) for seed in (1, 1, 2))
    plans = [[tuple(it.planned_files(n)) for n in range(8)] for it in (a, b, c)]
    assert plans[0] == plans[1] and plans[0] != plans[2]
    assert plans[0][:4] != plans[0][4:]  # epoch 2 is shuffled differently
    assert sorted(sum(plans[0][:4], ())) == sorted(sum(plans[0][4:], ())) == list(range(16))
    _assert_same_batches(_batches(a, 8), _batches(b, 8))


@pytest.mark.parametrize("pad", [False, True])
def test_shards_are_disjoint_and_cover_each_global_batch(tmp_path, pad):
    lengths = [4_000 + 97 * i for i in range(48)]
    _corpus(tmp_path, lengths)
    common = dict(
        batch_size=2,
        seed=5,
        min_sample_size=MIN,
        max_sample_size=MAX,
        num_buckets=2,
        pad=pad,
        num_workers=0,
        shard_count=3,
        normalize=False,
    )
    shards = [make_train_iterator(tmp_path / "m.tsv", shard_index=i, **common) for i in range(3)]
    single = make_train_iterator(tmp_path / "m.tsv", **{**common, "batch_size": 6, "shard_count": 1})
    per_epoch = shards[0].batches_per_epoch
    assert per_epoch == single.batches_per_epoch
    for epoch in range(2):
        epoch_files = []
        for number in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            parts = [next(s) for s in shards]
            whole = next(single)
            rows = np.concatenate([p["input_values"] for p in parts])
            np.testing.assert_array_equal(rows, whole["input_values"])  # shards = slices of one global batch
            files = np.concatenate([s.planned_files(number) for s in shards])
            assert len(set(files.tolist())) == 6
            epoch_files.extend(files.tolist())
        assert len(epoch_files) == len(set(epoch_files))
        # Everything in a bucket with a full global batch is read; only bucket remainders wait.
        assert len(epoch_files) >= len(lengths) - 2 * (6 - 1)


def test_restore_replays_exact_batches_across_epoch_boundary(tmp_path):
    _corpus(tmp_path, [4_000 + 300 * i for i in range(12)])

    def make():
        return make_train_iterator(
            tmp_path / "m.tsv",
            batch_size=4,
            seed=9,
            min_sample_size=MIN,
            max_sample_size=MAX,
            num_buckets=2,
            num_workers=0,
        )

    reference = make()
    per_epoch = reference.batches_per_epoch
    expected = _batches(reference, 3 * per_epoch + 1)
    for stop in (1, per_epoch, per_epoch + 1, 2 * per_epoch - 1):
        first = make()
        _batches(first, stop)
        state = json.loads(json.dumps(first.get_state()))
        assert state["next_batch"] == stop and state["epoch"] == stop // per_epoch
        resumed = make()
        resumed.set_state(state)
        _assert_same_batches(_batches(resumed, len(expected) - stop), expected[stop:])
        # set_state also rewinds an iterator that is already running.
        _batches(first, 2)
        first.set_state(state)
        _assert_same_batches(_batches(first, 2), expected[stop : stop + 2])


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_state(tmp_path):
    _corpus(tmp_path, [4_000 + 250 * i for i in range(16)])
    common = dict(batch_size=4, seed=4, min_sample_size=MIN, max_sample_size=MAX, num_buckets=2)
    with make_train_iterator(tmp_path / "m.tsv", num_workers=0, **common) as threads:
        expected = _batches(threads, 10)
    with make_train_iterator(tmp_path / "m.tsv", num_workers=2, **common) as workers:
        _assert_same_batches(_batches(workers, 5), expected[:5])
        state = workers.get_state()
    with make_train_iterator(tmp_path / "m.tsv", num_workers=1, **common) as resumed:
        resumed.set_state(state)
        _assert_same_batches(_batches(resumed, 5), expected[5:])


def test_restore_refuses_changed_manifest_or_config(tmp_path):
    paths = _corpus(tmp_path, [MAX] * 8)
    common = dict(batch_size=4, seed=0, min_sample_size=MIN, max_sample_size=MAX, num_workers=0)
    iterator = make_train_iterator(tmp_path / "m.tsv", **common)
    next(iterator)
    state = iterator.get_state()
    write_manifest(tmp_path / "m.tsv", ".", paths[:7] + [paths[0]], [MAX] * 8)
    with pytest.raises(ValueError, match="changed since this state was saved"):
        make_train_iterator(tmp_path / "m.tsv", **common).set_state(state)
    write_manifest(tmp_path / "m.tsv", ".", paths, [MAX] * 8)
    with pytest.raises(ValueError, match=r"configuration changed .*seed: 0 then, 1 now"):
        make_train_iterator(tmp_path / "m.tsv", **{**common, "seed": 1}).set_state(state)
    with pytest.raises(ValueError, match="not a"):
        iterator.set_state({"next_batch": 1})


def _bad_corpus(folder, *, corrupt: bool):
    """A manifest with every kind of bad input; with corrupt=False, the same manifest with good files.

    Returns (manifest path, {path: expected outcome}) for the corrupt version.
    """
    folder.mkdir(parents=True, exist_ok=True)
    entries = []  # (path, manifest length, writer of the corrupt file or None)

    def add(name, length, corruptor=None, data=None):
        entries.append((name, length, corruptor, data))

    for i in range(13):
        add(f"good{i:02d}.wav", MAX + 37 * i)
    # Converted, not skipped: 44.1 kHz stereo and 22.05 kHz mono.
    add("stereo44k.wav", audio.resampled_length(24_000, 44_100), data=(_signal(100, 48_000).reshape(-1, 2), 44_100))
    add("mono22k.flac", audio.resampled_length(12_000, 22_050), data=(_signal(101, 12_000), 22_050))
    # Bad at load time (the manifest looks fine).
    add("missing.wav", MAX, lambda p: p.unlink())
    add("random.wav", MAX, lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)))
    add("truncated.flac", MAX, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]))
    add("empty.wav", MAX, lambda p: soundfile.write(p, np.zeros((0, 1), np.float32), 16_000))
    add("zero_bytes.wav", MAX, lambda p: p.write_bytes(b""))
    add("tiny.wav", MAX, lambda p: soundfile.write(p, _signal(7, 300), 16_000))
    add(
        "nan.wav",
        MAX,
        lambda p: soundfile.write(p, np.where(np.arange(MAX) == 5, np.nan, _signal(8, MAX)), 16_000, subtype="FLOAT"),
    )
    add(
        "inf.wav",
        MAX,
        lambda p: soundfile.write(p, np.where(np.arange(MAX) == 9, np.inf, _signal(9, MAX)), 16_000, subtype="FLOAT"),
    )
    add("longer.wav", MAX, lambda p: soundfile.write(p, _signal(10, MAX + 500), 16_000))
    add("truncated_wav.wav", MAX, lambda p: p.write_bytes(p.read_bytes()[: 44 + 2 * MAX // 2]))
    add(
        "stereo_nan.wav",
        MAX,
        lambda p: soundfile.write(p, np.full((MAX, 2), np.nan, np.float32), 16_000, subtype="FLOAT"),
    )
    # Bad from the manifest alone.
    add("zero_in_manifest.wav", 0)
    add("short_in_manifest.wav", 399)
    add("below_min.wav", MIN - 1)
    for index, (name, length, corruptor, data) in enumerate(entries):
        path = folder / name
        signal, rate = data if data is not None else (_signal(200 + index, max(length, 1)), 16_000)
        soundfile.write(path, signal, rate, subtype="PCM_16")
        if corrupt and corruptor is not None:
            corruptor(path)
    write_manifest(folder / "m.tsv", ".", [e[0] for e in entries], [e[1] for e in entries])
    return folder / "m.tsv"


EXPECTED_SKIPS = {
    skips.MISSING: 1,
    skips.UNREADABLE: 2,
    skips.EMPTY: 3,
    skips.NON_FINITE: 3,
    skips.SHORTER_THAN_RECEPTIVE_FIELD: 2,
    skips.LENGTH_MISMATCH: 2,
    skips.SHORTER_THAN_MIN_SAMPLE_SIZE: 1,
}


@pytest.mark.parametrize("pad", [False, True])
def test_bad_inputs_are_skipped_counted_logged_and_replaced(tmp_path, caplog, pad):
    bad = _bad_corpus(tmp_path / "bad", corrupt=True)
    good = _bad_corpus(tmp_path / "good", corrupt=False)
    common = dict(
        batch_size=4,
        seed=1,
        min_sample_size=MIN,
        max_sample_size=MAX,
        num_buckets=2,
        pad=pad,
        num_workers=0,
        max_skip_fraction=1.0,
    )
    with caplog.at_level(logging.INFO, logger="w2v_jax.data"):
        corrupt_it = make_train_iterator(bad, **common)
        clean_it = make_train_iterator(good, **common)
        assert corrupt_it.batches_per_epoch == clean_it.batches_per_epoch == 6  # 24 usable / 4
        usable = ("good", "stereo44k", "mono22k")
        bad_files = {i for i, p in enumerate(corrupt_it.manifest.paths) if not p.startswith(usable)}
        for number in range(2 * corrupt_it.batches_per_epoch):
            files = corrupt_it.planned_files(number)
            x, y = next(corrupt_it), next(clean_it)
            chex.assert_equal_shape([x["input_values"], y["input_values"], x["attention_mask"]])
            assert x["input_values"].shape[0] == 4
            for slot, index in enumerate(files):
                if index in bad_files:  # refilled with another usable utterance of the bucket
                    assert x["attention_mask"][slot].sum() > 0 and np.isfinite(x["input_values"][slot]).all()
                else:  # every other row is exactly what a clean corpus gives
                    np.testing.assert_array_equal(x["input_values"][slot], y["input_values"][slot])
                    np.testing.assert_array_equal(x["attention_mask"][slot], y["attention_mask"][slot])
    assert corrupt_it.skip_counts() == EXPECTED_SKIPS  # distinct files: the second epoch adds nothing
    assert corrupt_it.conversion_counts() == {skips.RESAMPLED: 2, skips.DOWNMIXED: 1}
    assert clean_it.skip_counts() == {
        **dict.fromkeys(skips.SKIP_REASONS, 0),
        "shorter_than_min_sample_size": 1,
        "empty": 1,
        "shorter_than_receptive_field": 1,
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipping" in r.getMessage()]
    bad_dir = str(tmp_path / "bad")
    skipped_lines = [w for w in warnings if bad_dir in w]
    assert len(skipped_lines) == sum(EXPECTED_SKIPS.values())  # one line per distinct file
    for name, reason in [
        ("missing.wav", "missing"),
        ("random.wav", "unreadable"),
        ("nan.wav", "non_finite"),
        ("longer.wav", "length_mismatch"),
        ("zero_bytes.wav", "empty"),
        ("tiny.wav", "shorter_than"),
    ]:
        assert any(f"{name}: {reason}" in w for w in skipped_lines), name
    summary = corrupt_it.summary()
    assert "skipped 14" in summary and "missing: 1" in summary and "resampled: 2" in summary
    # The bookkeeping survives a checkpoint.
    restored = make_train_iterator(bad, **common)
    restored.set_state(json.loads(json.dumps(corrupt_it.get_state())))
    assert restored.skip_counts() == EXPECTED_SKIPS and restored.conversion_counts() == corrupt_it.conversion_counts()


def test_too_many_bad_files_stop_the_run(tmp_path):
    bad = _bad_corpus(tmp_path, corrupt=True)
    iterator = make_train_iterator(
        bad,
        batch_size=4,
        seed=1,
        min_sample_size=MIN,
        max_sample_size=MAX,
        num_buckets=2,
        num_workers=0,
        max_skip_fraction=0.2,
    )
    with pytest.raises(skips.TooManySkippedFiles, match="max_skip_fraction=0.2"):
        _batches(iterator, 6)


def test_strict_mode_raises_on_the_first_bad_file(tmp_path):
    bad = _bad_corpus(tmp_path / "a", corrupt=True)
    common = dict(
        batch_size=4, seed=1, min_sample_size=MIN, max_sample_size=MAX, num_buckets=2, num_workers=0, strict=True
    )
    with pytest.raises(skips.BadInputError, match="zero_in_manifest.wav: empty"):
        make_train_iterator(bad, **common)  # a manifest entry of length 0 is caught up front
    paths = _corpus(tmp_path / "b", [MAX] * 8)
    (tmp_path / "b" / paths[3]).unlink()
    iterator = make_train_iterator(tmp_path / "b" / "m.tsv", **common)
    with pytest.raises(skips.BadInputError, match=f"{paths[3]}: missing"):
        _batches(iterator, 2)
    # A below-min_sample_size file is a configured filter, not an error, even in strict mode.
    _corpus(tmp_path / "c", [MAX] * 8 + [MIN - 1])
    strict_filtered = make_train_iterator(tmp_path / "c" / "m.tsv", **common)
    assert strict_filtered.skip_counts()[skips.SHORTER_THAN_MIN_SAMPLE_SIZE] == 1


def test_folder_input_and_unusable_configurations(tmp_path):
    _corpus(tmp_path, [MAX] * 8)
    (tmp_path / "junk.flac").write_bytes(b"junk")
    iterator = make_train_iterator(
        tmp_path, batch_size=4, seed=0, min_sample_size=MIN, max_sample_size=MAX, num_workers=0, max_skip_fraction=1.0
    )
    assert next(iterator)["input_values"].shape == (4, MAX)
    assert iterator.skip_counts()[skips.UNREADABLE] == 1
    with pytest.raises(ValueError, match="no length bucket holds a full global batch of 16"):
        make_train_iterator(
            tmp_path / "m.tsv", batch_size=8, shard_count=2, seed=0, min_sample_size=MIN, max_sample_size=MAX
        )
    with pytest.raises(ValueError, match="shard_index"):
        make_train_iterator(tmp_path / "m.tsv", batch_size=4, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="max_sample_size"):
        make_train_iterator(tmp_path / "m.tsv", batch_size=4, seed=0, min_sample_size=9000, max_sample_size=8000)
    shutil.rmtree(tmp_path)
    with pytest.raises(ValueError, match="no such manifest"):
        make_train_iterator(tmp_path / "m.tsv", batch_size=4, seed=0)


def test_loader_benchmark_reports_throughput(tmp_path):

    _corpus(tmp_path, [MAX] * 8)
    result = input_benchmark.measure_loader(
        tmp_path / "m.tsv",
        num_workers=0,
        batch_size=4,
        batches=3,
        warmup=1,
        pad=False,
        max_sample_size=MAX,
        min_sample_size=MIN,
    )
    assert result["audio_s_per_s"] > 0 and result["batches_per_s"] > 0 and result["startup_s"] > 0
    # Every utterance is MAX samples long: batches are uncropped, their length is MAX.
    assert result["mean_batch_seconds"] == MAX / 16_000
    np.testing.assert_allclose(result["audio_s_per_s"], result["batches_per_s"] * 4 * MAX / 16_000, rtol=1e-9)


def test_the_first_bad_file_of_a_small_folder_does_not_stop_the_run():
    """10 files, limit 5%: one bad file (10%) says nothing yet; the second one stops the run."""
    tracker = skips.SkipTracker(10, lambda i: f"f{i}.wav", strict=False, max_skip_fraction=0.05)
    tracker.record(0)
    tracker.record(1, reason=skips.UNREADABLE, detail="garbage")
    tracker.record(2)
    with pytest.raises(skips.TooManySkippedFiles) as info:
        tracker.record(3, reason=skips.MISSING, detail="no such file")
    message = str(info.value)
    assert message.startswith("2 of 4 files read so far are unusable (missing: 1, unreadable: 1)")
    assert "of 10 files (measured over the distinct files read so far, at least min(manifest size, 100)" in message
    assert "data.max_skip_fraction" in message and "\n" not in message
    # A large corpus: 100 files read, 5 bad is at the limit, the 6th passes it.
    large = skips.SkipTracker(1000, lambda i: f"f{i}.wav", strict=False, max_skip_fraction=0.05)
    for i in range(95):
        large.record(i)
    for i in range(95, 100):
        large.record(i, reason=skips.EMPTY)
    with pytest.raises(skips.TooManySkippedFiles, match="6 of 101 files .* of 101 files"):
        large.record(100, reason=skips.EMPTY)


def test_token_budget_sizes_each_buckets_batch_and_rounds_it():
    buckets = np.array([4_000, 5_000, 8_000])
    sizes = planning.global_batch_sizes(buckets, batch_size=3, shard_count=2, max_tokens=0, batch_multiple=4)
    np.testing.assert_array_equal(sizes, [6, 6, 6])  # no budget: batch_size rows per process
    # 100k // [4000, 5000, 8000] = [25, 20, 12] rows, rounded down to multiples of 4.
    sizes = planning.global_batch_sizes(buckets, batch_size=3, shard_count=2, max_tokens=100_000, batch_multiple=4)
    np.testing.assert_array_equal(sizes, [24, 20, 12])
    with pytest.raises(ValueError, match=r"max_tokens=30000 holds no batch of 4 rows .* at least 32000"):
        planning.global_batch_sizes(buckets, batch_size=3, shard_count=2, max_tokens=30_000, batch_multiple=4)
    with pytest.raises(ValueError, match="batch_multiple=3 must be a positive multiple of shard_count=2"):
        pipeline.PipelineConfig(batch_size=1, seed=0, shard_count=2, max_tokens=10**6, batch_multiple=3)


@pytest.mark.parametrize("pad", [False, True])
def test_token_budget_batches_are_sharded_and_resume_on_another_process_count(tmp_path, pad):
    lengths = [4_000] * 12 + [4_000 + 80 * i for i in range(50)] + [8_000] * 30
    _corpus(tmp_path, lengths)
    common = dict(
        batch_size=1,  # not used under a budget
        seed=3,
        min_sample_size=MIN,
        max_sample_size=MAX,
        num_buckets=3,
        pad=pad,
        num_workers=0,
        normalize=False,
        max_tokens=40_000,
        batch_multiple=2,
    )
    single = make_train_iterator(tmp_path / "m.tsv", **common)
    assert single.global_batch_sizes.tolist() == [10, 6, 4]  # 40k // [4000, 5657, 8000], even
    expected = _batches(single, 2 * single.batches_per_epoch)
    assert len({b["input_values"].shape for b in expected}) == 3  # every bucket's shape occurs
    for batch in expected:
        rows, length = batch["input_values"].shape
        assert rows % 2 == 0 and rows * length <= 40_000 < (rows + 2) * length
        assert rows == single.rows_for_length(length)
    # Two processes read the halves of the same global batches.
    shards = [make_train_iterator(tmp_path / "m.tsv", **common, shard_index=i, shard_count=2) for i in range(2)]
    for batch in expected[:6]:
        parts = [next(s) for s in shards]
        np.testing.assert_array_equal(np.concatenate([p["input_values"] for p in parts]), batch["input_values"])
    # The two processes' states continue on one process (and one process's on two) at the global position.
    states = json.loads(json.dumps([s.get_state() for s in shards]))
    resumed = make_train_iterator(tmp_path / "m.tsv", **common)
    resumed.restore_global(states)
    _assert_same_batches(_batches(resumed, 6), expected[6:12])
    halves = [make_train_iterator(tmp_path / "m.tsv", **common, shard_index=i, shard_count=2) for i in range(2)]
    for half in halves:
        half.restore_global([resumed.get_state()])
    for batch in expected[12:15]:
        parts = [next(h) for h in halves]
        np.testing.assert_array_equal(np.concatenate([p["input_values"] for p in parts]), batch["input_values"])
    # Another budget (or rounding) is another global batch: refused, naming the rows.
    other = make_train_iterator(tmp_path / "m.tsv", **{**common, "batch_multiple": 4})
    with pytest.raises(ValueError, match=r"global batch changed since this state was saved \(rows per bucket"):
        other.set_state(resumed.get_state())


@pytest.mark.parametrize("pad", [False, True])
def test_rows_written_at_the_files_own_rate_are_converted_not_skipped(tmp_path, caplog, pad):
    # The same 16 kHz lengths stored at 44.1 kHz and 8 kHz, half the rows written as fairseq's
    # wav2vec_manifest.py writes them (the header's frame count), half as ours (16 kHz samples).
    rates = [44_100, 8_000] * 4
    lengths_16k = [4_500, 4_500, 6_000, 6_000, 7_000, 7_000, 8_000, 8_000]
    names, rows = [], []
    for i, (rate, length) in enumerate(zip(rates, lengths_16k)):
        frames = length * rate // 16_000
        names.append(f"r{i}.wav")
        soundfile.write(tmp_path / names[-1], _signal(i, frames), rate, subtype="FLOAT")
        rows.append(frames if i % 4 < 2 else audio.resampled_length(frames, rate))
    names.append("wrong.wav")  # neither count: still a length mismatch
    soundfile.write(tmp_path / "wrong.wav", _signal(9, 5_000), 8_000, subtype="FLOAT")
    rows.append(7_777)
    write_manifest(tmp_path / "m.tsv", ".", names, rows)
    np.testing.assert_array_equal(
        manifest.lengths_at_16k(manifest.load_manifest(tmp_path / "m.tsv"))[:8],
        [audio.resampled_length(length * rate // 16_000, rate) for rate, length in zip(rates, lengths_16k)],
    )
    common = dict(seed=0, min_sample_size=MIN, max_sample_size=MAX, num_buckets=2, pad=pad, num_workers=0)
    with caplog.at_level(logging.INFO, logger="w2v_jax.data"):
        iterator = make_train_iterator(tmp_path / "m.tsv", batch_size=2, max_skip_fraction=1.0, **common)
        for _ in range(3 * iterator.batches_per_epoch):
            batch = next(iterator)
            # The bucket came from the 16 kHz length: crops are full, padded rows hold the whole file.
            assert batch["attention_mask"].sum(axis=1).min() >= (MIN if not pad else 4_400)
    counts = iterator.skip_counts()
    assert counts[skips.LENGTH_MISMATCH] == 1 and sum(counts.values()) == 1
    assert iterator.conversion_counts()[skips.RESAMPLED] == 9  # wrong.wav was resampled before its check
    for i, name in enumerate(names[:8]):
        lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert lines and all(line.startswith(f"converted {tmp_path / name}") for line in lines), lines
        assert not any(word in " ".join(lines) for word in ("skip", "unreadable", "invalid"))
        assert ("frame count at" in lines[0]) == (i % 4 < 2)


def test_batching_report_of_a_token_budget_and_of_fixed_batches(tmp_path):
    lengths = [4_000] * 12 + [4_000 + 80 * i for i in range(50)] + [9_000] * 30
    _corpus(tmp_path, lengths)
    common = dict(pad=True, max_sample_size=MAX, min_sample_size=MIN, num_buckets=3, batch_multiple=2)
    budget = input_benchmark.batching_report(tmp_path / "m.tsv", batch_size=1, max_tokens=40_000, **common)
    fixed = input_benchmark.batching_report(tmp_path / "m.tsv", batch_size=6, max_tokens=0, **common)
    assert budget["max_samples"] <= 40_000 < fixed["max_samples"] == 6 * MAX
    assert budget["compiles"] == 3 and fixed["compiles"] == 3
    # Padding: real samples over the batches' samples, and the 9000-sample files cut to MAX.
    for report in (budget, fixed):
        assert 0.5 < report["audio_share"] < 1 and report["kept_share"] < 1
        assert report["budget_audio_share"] <= report["audio_share"]
    lines = input_benchmark.compare_batching(tmp_path / "m.tsv", max_tokens=40_000, **{k: v for k, v in common.items()})
    assert lines[0].startswith("pad max_tokens=40000: ") and "3 compiles" in lines[0]
    crop = input_benchmark.batching_report(tmp_path / "m.tsv", batch_size=4, max_tokens=0, **{**common, "pad": False})
    assert crop["audio_share"] == 1.0 and crop["kept_share"] < 1


@pytest.mark.parametrize("weights, alpha, expected", [((), 0.5, (2 / 3, 1 / 3)), ((1, 3), 0.0, (0.25, 0.75))])
def test_several_corpora_are_sampled_at_their_shares_deterministically_and_resumably(
    tmp_path, weights, alpha, expected
):
    # 40 and 10 utterances: temperature sampling with alpha 0.5 gives sqrt(40):sqrt(10) = 2:1.
    _corpus(tmp_path / "big", [MAX] * 40)
    _corpus(tmp_path / "small", [MAX - 100] * 10)
    manifests = [tmp_path / "big" / "m.tsv", tmp_path / "small" / "m.tsv"]
    (tmp_path / "small" / "m.tsv").rename(tmp_path / "small" / "extra.tsv")
    manifests[1] = tmp_path / "small" / "extra.tsv"
    common = dict(batch_size=5, seed=2, min_sample_size=MIN, max_sample_size=MAX, num_buckets=1, num_workers=0)
    common.update(corpus_weights=weights, sampling_alpha=alpha, normalize=False)
    iterator = make_train_iterator(manifests, **common)
    np.testing.assert_allclose(iterator.corpus_probabilities, expected)
    per_epoch = iterator.batches_per_epoch
    assert per_epoch == 50 // 5  # the epoch keeps the corpora's total size
    batches = _batches(iterator, 3 * per_epoch)
    shares = iterator.corpus_shares()
    assert list(shares) == ["m", "extra"]
    # Each epoch draws round(p x 50) utterances of each corpus: the shares are exact.
    np.testing.assert_allclose(list(shares.values()), expected, atol=0.5 / 50)
    # A small corpus above its natural share is repeated whole before any file repeats.
    small = [i for n in range(per_epoch) for i in iterator.planned_files(n) if i >= 40]
    assert len(small) == round(expected[1] * 50) and len(set(small)) == min(len(small), 10)
    # Deterministic, and a restored state continues the batches and the shares.
    again = make_train_iterator(manifests, **common)
    _batches(again, per_epoch + 3)
    state = json.loads(json.dumps(again.get_state()))
    resumed = make_train_iterator(manifests, **common)
    resumed.set_state(state)
    _assert_same_batches(_batches(resumed, 2 * per_epoch - 3), batches[per_epoch + 3 :])
    assert resumed.corpus_shares() == shares
    with pytest.raises(ValueError, match="one non-negative weight per manifest"):
        make_train_iterator(manifests, **{**common, "corpus_weights": (1.0,)})


def test_several_corpora_that_moved_resume_as_one_manifest_does(tmp_path):
    # Relative manifest roots ("."), copied whole to another disk: the entries are the same, the
    # absolute paths of the rows are not.
    for name, length in (("big", MAX), ("small", MAX - 100)):
        _corpus(tmp_path / "disk1" / name, [length] * (10 if name == "big" else 5))
    shutil.copytree(tmp_path / "disk1", tmp_path / "disk2")
    common = dict(batch_size=5, seed=1, min_sample_size=MIN, max_sample_size=MAX, num_buckets=1, num_workers=0)
    common.update(corpus_weights=(2, 1), normalize=False)
    first, moved = (
        make_train_iterator([tmp_path / disk / name / "m.tsv" for name in ("big", "small")], **common)
        for disk in ("disk1", "disk2")
    )
    _batches(first, 4)
    state = json.loads(json.dumps(first.get_state()))
    moved.set_state(state)
    _assert_same_batches(_batches(moved, 3), _batches(first, 3))
    # A changed entry is still refused.
    write_manifest(tmp_path / "disk2" / "small" / "m.tsv", ".", [f"u{i:03d}.wav" for i in range(4)], [MAX - 100] * 4)
    with pytest.raises(ValueError, match="fingerprint"):
        make_train_iterator([tmp_path / "disk2" / n / "m.tsv" for n in ("big", "small")], **common).set_state(state)
