"""The embedded espeak-ng corpus shipped in w2v_jax/data/corpus/ (the launcher's default data)."""

import json

import numpy as np
import pytest
import soundfile

from tools import make_tts_corpus as tts
from w2v_jax.data import CORPUS_DIR, SAMPLE_RATE, default_manifest, load_audio, make_train_iterator, read_manifest


@pytest.fixture(scope="module")
def metadata() -> dict[str, dict]:
    lines = (CORPUS_DIR / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    return {r["path"]: r for r in records}


def test_size_duration_and_splits(metadata):
    total_bytes = sum(p.stat().st_size for p in CORPUS_DIR.rglob("*") if p.is_file())
    assert total_bytes <= 10_000_000
    seconds = {s: read_manifest(default_manifest(s)).num_samples.sum() / SAMPLE_RATE for s in ("train", "valid")}
    assert 15 * 60 <= sum(seconds.values()) <= 30 * 60
    assert seconds["valid"] > 60
    train, valid = (read_manifest(default_manifest(s)) for s in ("train", "valid"))
    assert not set(train.paths) & set(valid.paths)
    assert set(train.paths) | set(valid.paths) == set(metadata)
    # Held-out sentences: no valid text is also in train.
    assert not {metadata[p]["text"] for p in train.paths} & {metadata[p]["text"] for p in valid.paths}
    assert {r["language"] for r in metadata.values()} == {"en", "fr", "de", "es", "it"}
    with pytest.raises(ValueError, match="split"):
        default_manifest("test")


@pytest.mark.parametrize("split", ["train", "valid"])
def test_manifest_matches_files(split, metadata):
    manifest = read_manifest(default_manifest(split))
    assert manifest.root == CORPUS_DIR  # root "." resolved beside the manifest, wherever installed
    for index, path in enumerate(manifest.paths):
        info = soundfile.info(manifest.file_path(index))
        assert (info.samplerate, info.channels, info.format) == (SAMPLE_RATE, 1, "FLAC")
        assert info.frames == manifest.num_samples[index] == metadata[path]["num_samples"]


def test_alignments_cover_each_utterance(metadata):
    for record in metadata.values():
        n = record["num_samples"]
        for kind in ("phoneme", "word"):
            starts, ends = np.asarray(record[f"{kind}_starts"]), np.asarray(record[f"{kind}_ends"])
            labels = record[f"{kind}s"]
            assert len(labels) == len(starts) == len(ends) > 3, record["id"]
            assert np.all(np.diff(starts) >= 0) and np.all(ends >= starts), record["id"]
            np.testing.assert_array_equal(ends[:-1], starts[1:])  # contiguous spans
            assert 0 <= starts[0] < n and ends[-1] == n, record["id"]
            assert all(isinstance(label, str) and label for label in labels)
        assert record["phoneme_starts"][0] < SAMPLE_RATE // 2  # speech starts within half a second
        position = 0  # words are the text's words, in order
        for word in record["words"]:
            position = record["text"].index(word, position) + len(word)
        assert set(record) >= {"text", "language", "voice", "split", "sample_rate"}


def test_audio_is_speech_like_and_loads(metadata):
    path = next(iter(metadata))
    samples = load_audio(CORPUS_DIR / path, normalize_audio=False)
    record = metadata[path]
    assert samples.shape == (record["num_samples"],)
    assert 0.02 < float(np.sqrt(np.mean(samples**2))) < 0.5
    # The audio between the first and last phoneme is not silent.
    speech = samples[record["phoneme_starts"][0] : record["phoneme_starts"][-1]]
    assert np.mean(np.abs(speech) > 1e-3) > 0.5


def test_default_manifest_feeds_the_pipeline():
    iterator = make_train_iterator(
        default_manifest("train"), batch_size=4, seed=0, num_workers=0, max_sample_size=32_000, min_sample_size=16_000
    )
    batch = next(iterator)
    assert batch["input_values"].shape[0] == 4 and batch["input_values"].shape[1] in iterator.buckets
    assert sum(iterator.skip_counts().values()) == 0


def test_corpus_script_alignment_and_precision_helpers(tmp_path):

    events = [
        (tts._EVENT_WORD, 0, 1, "5"),
        (tts._EVENT_PHONEME, 220, 0, "h"),
        (tts._EVENT_PHONEME, 2205, 0, "(en)"),
        (tts._EVENT_PHONEME, 2205, 0, "ɛ"),
        (tts._EVENT_WORD, 4410, 7, "5"),
        (tts._EVENT_PHONEME, 4410, 0, ""),
    ]
    spans = tts._alignments(events, "Hello world", 22_050, 6_400)
    assert spans["phonemes"] == ["h", "ɛ", "_"] and spans["words"] == ["Hello", "world"]
    assert spans["phoneme_starts"] == [160, 1600, 3200] and spans["phoneme_ends"] == [1600, 3200, 6400]
    assert spans["word_starts"] == [0, 3200] and spans["word_ends"] == [3200, 6400]
    x = np.linspace(-1, 1, 1001)
    for bits in (16, 10, 8):
        q = tts._quantize(x, bits)
        np.testing.assert_allclose(q, x, atol=2.0 ** (1 - bits))  # one step: +1 clips to the largest code
        assert len(np.unique(q)) <= 2**bits
    # The precision is lowered only as far as the byte budget needs.
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 16_000 * 3)
    utterance = dict(id="en_00_0", language="en", split="train", text="x", num_samples=len(noise), audio=noise)
    valid = {**utterance, "id": "en_01_0", "split": "valid"}
    roomy = tts.write_corpus([dict(utterance), dict(valid)], tmp_path / "a", max_bytes=10_000_000)
    tight = tts.write_corpus([dict(utterance), dict(valid)], tmp_path / "b", max_bytes=150_000)
    assert roomy["bits"] == 16 and 8 < tight["bits"] < 16
    assert tight["audio_bytes"] + tight["metadata_bytes"] + 20_000 <= 150_000
    one_more_bit = sum(len(tts._flac_bytes(tts._quantize(noise, tight["bits"] + 1))) for _ in range(2))
    assert one_more_bit + tight["metadata_bytes"] + 20_000 > 150_000
    assert read_manifest(tmp_path / "b" / "valid.tsv").paths == ("audio/en/en_01_0.flac",)
