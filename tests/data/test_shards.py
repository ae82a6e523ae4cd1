"""Shard sets (w2v_jax.data.shards, shard_preparation): the rows a manifest run reads, the same batches,
resumable preparation, checksums."""

import json
import logging
import re
import struct

import grain
import numpy as np
import pytest

from tests.data.test_pipeline import EXPECTED_SKIPS, MAX, MIN, _bad_corpus, _batches, _corpus
from tests.support import NESTED_JSON
from tests.support.launchers import run_main
from w2v_jax.cli import benchmark_input
from w2v_jax.data import default_manifest, make_train_iterator, manifest, pipeline, shard_preparation, shards
from w2v_jax.data.labels import LabelSet, build_vocabulary, read_label_lines

COMMON = dict(batch_size=4, seed=1, min_sample_size=MIN, max_sample_size=MAX, num_buckets=2, max_skip_fraction=1.0)


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("pad", [False, True])
def test_shards_read_every_row_as_its_file_and_give_the_manifests_batches_and_skips(tmp_path, caplog, pad):
    source = _bad_corpus(tmp_path / "bad", corrupt=True)
    with caplog.at_level(logging.WARNING, logger="w2v_jax.data"):
        report = shard_preparation.prepare_shards(source, tmp_path / "shards", shard_mb=0.05)
    named = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    files, rows = manifest.read_manifest(source), manifest.load_manifest(tmp_path / "shards")
    assert rows.paths == files.paths and rows.fingerprint() == files.fingerprint()
    assert len(rows.shard_rows.files) > 1  # several shards, read as one sequence of rows
    # Every row decodes to its file's samples, or fails for the file's reason: the rows kept are the
    # rows a manifest run reads, and each bad one is named and counted at preparation.
    skipped = 0
    for index in range(len(files)):
        (from_file, outcome), (from_shard, shard_outcome) = (pipeline.read_row(m, index) for m in (files, rows))
        assert shard_outcome[1] == outcome[1] and shard_outcome[3:] == outcome[3:], files.paths[index]
        if from_file is None:
            assert from_shard is None and any(files.paths[index] in line for line in named)
            skipped += 1
        else:
            np.testing.assert_array_equal(from_shard, from_file)
    assert f"skipped {skipped} unusable rows" in report[1]
    # A run on the shards reads the manifest run's batches (two epochs: refills included) and counts
    # the same skips; its state resumes a manifest run's and the other way round.
    common = dict(COMMON, pad=pad, num_workers=0)
    on_files, on_shards = make_train_iterator(source, **common), make_train_iterator(tmp_path / "shards", **common)
    expected = _batches(on_files, 2 * on_files.batches_per_epoch)
    _assert_same_batches(_batches(on_shards, len(expected)), expected)
    assert on_shards.skip_counts() == on_files.skip_counts() == EXPECTED_SKIPS
    assert on_shards.conversion_counts() == on_files.conversion_counts()
    resumed = make_train_iterator(tmp_path / "shards" / shards.DESCRIPTOR, **common)
    resumed.set_state(json.loads(json.dumps(on_files.get_state())))
    _assert_same_batches(_batches(resumed, 3), _batches(on_files, 3))
    # Two processes on the shards read the halves of the global batches, and resume on one.
    halves = [
        make_train_iterator(tmp_path / "shards", **{**common, "batch_size": 2}, shard_index=i, shard_count=2)
        for i in (0, 1)
    ]
    for half in halves:
        half.set_state(resumed.get_state())
    for batch in _batches(on_files, 2):
        parts = [next(h) for h in halves]
        np.testing.assert_array_equal(np.concatenate([p["input_values"] for p in parts]), batch["input_values"])
    resumed.restore_global([h.get_state() for h in halves])
    _assert_same_batches(_batches(resumed, 2), _batches(on_files, 2))


def _stop_at_row(monkeypatch, number):
    """Makes the preparation stop (as a kill would) when it has read `number` rows, in mid-shard."""
    read_rows = shard_preparation._read_rows

    def stopping(manifest, start, num_workers):
        for count, row in enumerate(read_rows(manifest, start, num_workers), start=start):
            if count == number:
                raise KeyboardInterrupt
            yield row

    monkeypatch.setattr(shard_preparation, "_read_rows", stopping)


def test_a_stopped_preparation_continues_to_the_bytes_of_an_uninterrupted_one(tmp_path, monkeypatch):
    _corpus(tmp_path / "corpus", [MIN + 100 * i for i in range(20)])
    source = tmp_path / "corpus" / "m.tsv"
    shard_preparation.prepare_shards(source, tmp_path / "whole", shard_mb=0.07)
    _stop_at_row(monkeypatch, 11)
    with pytest.raises(KeyboardInterrupt):
        shard_preparation.prepare_shards(source, tmp_path / "stopped", shard_mb=0.07)
    monkeypatch.undo()
    stopped = tmp_path / "stopped"
    assert not (stopped / shards.DESCRIPTOR).exists() and list(stopped.glob("*.partial"))
    with pytest.raises(ValueError, match="not a shard set"):
        shards.open_shard_set(stopped)
    with open(stopped / shard_preparation.PROGRESS, "a") as progress:
        progress.write('{"file": "shard-0')  # a record the stop cut short
    shard_preparation.prepare_shards(source, stopped, shard_mb=0.07)
    whole = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert whole == sorted(p.name for p in stopped.iterdir())
    assert len([n for n in whole if n.endswith(".array_record")]) > 3
    for name in whole:
        assert (stopped / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    # Other settings do not continue a stopped preparation.
    _stop_at_row(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        shard_preparation.prepare_shards(source, tmp_path / "other", shard_mb=0.07)
    with pytest.raises(ValueError, match="another manifest or other settings"):
        shard_preparation.prepare_shards(source, tmp_path / "other", shard_mb=0.5)


def test_a_finished_set_is_verified_and_damage_is_named(tmp_path):
    _corpus(tmp_path / "corpus", [MIN] * 6)
    out = tmp_path / "shards"
    shard_preparation.prepare_shards(tmp_path / "corpus" / "m.tsv", out, shard_mb=0.03)
    descriptor = json.loads((out / shards.DESCRIPTOR).read_text())
    assert descriptor["checksum"] == shards.set_checksum(
        [shards.file_digest(out / s["file"]) for s in descriptor["shards"]]
    )
    again = shard_preparation.prepare_shards(tmp_path / "corpus" / "m.tsv", out)
    assert again[0].startswith("already prepared") and "verified" in again[0]
    first = out / descriptor["shards"][1]["file"]
    data = bytearray(first.read_bytes())
    data[-100] ^= 0xFF  # same size: only the full check sees it
    first.write_bytes(bytes(data))
    manifest.load_manifest(out)
    with pytest.raises(ValueError, match=f"shard {first.name} has SHA-256"):
        shards.verify_shard_set(out)
    first.write_bytes(bytes(data[:-1]))
    with pytest.raises(ValueError, match=f"shard {first.name} is {len(data) - 1} bytes, the descriptor says"):
        manifest.load_manifest(out)
    first.unlink()
    with pytest.raises(ValueError, match=f"shard {first.name} is missing"):
        make_train_iterator(out, **COMMON)


@pytest.mark.parametrize(
    "text, problem",
    [
        (NESTED_JSON, "JSON nested deeper .* allows"),
        ("[]", "expected a JSON object at the top level, found an array"),
        ('"a.wav"', "expected a JSON object at the top level, found a string"),
    ],
)
def test_unreadable_json_is_one_line_naming_the_descriptor_the_record_or_the_progress_line(tmp_path, text, problem):
    (tmp_path / shards.DESCRIPTOR).write_text(text)
    descriptor = re.escape(str(tmp_path / shards.DESCRIPTOR))
    with pytest.raises(ValueError, match=rf"^{descriptor}: {problem}$"):
        manifest.load_manifest(tmp_path)
    header = text.encode()
    record = struct.pack("<I", len(header)) + header + b"RIFF"
    with pytest.raises(ValueError, match=rf"^the shard record of a\.wav's header: {problem}$"):
        shards.decode_record(record, "the shard record of a.wav")
    _corpus(tmp_path / "corpus", [MIN])
    out = tmp_path / "stopped"
    out.mkdir()
    (out / shard_preparation.PROGRESS).write_text(f"{text}\n")
    progress = re.escape(str(out / shard_preparation.PROGRESS))
    with pytest.raises(ValueError, match=rf"^{progress}: {problem} \(line 1\)$"):
        shard_preparation.prepare_shards(tmp_path / "corpus" / "m.tsv", out)


def test_labels_in_shards_give_the_manifests_labelled_batches_and_several_corpora_mix(tmp_path):
    train = default_manifest("train")
    out = tmp_path / "train_shards"
    shard_preparation.prepare_shards(train, out, labels=["ltr", "wrd"])
    rows_of = manifest.read_manifest(train)
    rows = len(rows_of)
    assert read_label_lines(out, "ltr", rows) == read_label_lines(train, "ltr", rows)
    # Any ArrayRecord reader reads the records: a header, then the file's bytes as stored.
    records = grain.sources.ArrayRecordDataSource(list(manifest.load_manifest(out).shard_rows.files))
    header, data = shards.decode_record(records[3])
    assert data == manifest.read_manifest(train).file_path(3).read_bytes() and header["id"] == rows_of.paths[3]
    assert header["labels"]["wrd"] == read_label_lines(train, "wrd", rows)[3]
    vocabulary = build_vocabulary(out, "ltr")
    assert vocabulary == build_vocabulary(train, "ltr")

    def iterator(path):
        labels = LabelSet(path, "ltr", vocabulary, lambda n: n // 320)
        return make_train_iterator(
            path, **dict(COMMON, max_sample_size=200_000), pad=True, num_workers=0, labels=labels
        )

    expected = _batches(iterator(train), 4)
    assert "labels" in expected[0]
    _assert_same_batches(_batches(iterator(out), 4), expected)
    # Several corpora: a list of shard sets is the list of their manifests; a mix is refused.
    valid = default_manifest("valid")
    shard_preparation.prepare_shards(valid, tmp_path / "valid_shards")
    common = dict(COMMON, max_sample_size=200_000, num_workers=0, corpus_weights=(1, 3))
    expected = _batches(make_train_iterator([train, valid], **common), 5)
    _assert_same_batches(_batches(make_train_iterator([out, tmp_path / "valid_shards"], **common), 5), expected)
    with pytest.raises(ValueError, match="shard sets and manifests cannot be mixed"):
        make_train_iterator([out, valid], **common)
    waveforms = manifest.load_waveforms(tmp_path / "valid_shards")
    for got, want in zip(waveforms, manifest.load_waveforms(valid)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_grain_workers_read_shards(tmp_path):
    shard_preparation.prepare_shards(default_manifest("valid"), tmp_path / "shards", shard_mb=1)
    common = dict(COMMON, max_sample_size=32_000, min_sample_size=16_000)
    expected = _batches(make_train_iterator(default_manifest("valid"), **common, num_workers=0), 3)
    with make_train_iterator(tmp_path / "shards", **common, num_workers=1) as on_workers:
        _assert_same_batches(_batches(on_workers, 3), expected)


def test_preparation_refuses_folders_and_names_missing_labels(tmp_path):
    _corpus(tmp_path, [MIN] * 2)
    with pytest.raises(ValueError, match="not a manifest file"):
        shard_preparation.prepare_shards(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="label file .* not found"):
        shard_preparation.prepare_shards(tmp_path / "m.tsv", tmp_path / "out", labels=["ltr"])


def test_input_benchmark_prepares_shards_and_times_them_beside_the_files(tmp_path, capsys):
    _corpus(tmp_path / "corpus", [MIN + 100 * i for i in range(8)])
    argv = [
        f"--manifest={tmp_path / 'corpus' / 'm.tsv'}",
        f"--shards={tmp_path / 'shards'}",
        "--rounds=1",
        "--workers=0",
        "--timed_batches=2",
        "--batch_size=2",
        f"--min_sample_size={MIN}",
        f"--max_sample_size={MAX}",
        "--num_buckets=1",
    ]
    run_main(benchmark_input, argv)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("preparation: 8 rows") and "rows/s" in lines[0]
    for line, name in zip(lines[1:], ("files", "shards")):
        rates = re.match(
            rf"{name}: workers=0, medians of 1 cold passes: ([\d.]+) audio-s/s, ([\d.]+) audio-s per", line
        )
        assert rates and float(rates[1]) > 0 and float(rates[2]) > 0, line
        assert re.search(r"cores per GPU at 750 audio-s/s\), \d+ MiB per worker \(the largest\)$", line), line
    assert shards.descriptor_path(tmp_path / "shards") is not None
