"""Label files beside manifests: normalisation, .ltr/.wrd/.phn reading, skips, the embedded corpus's labels."""

import glob
import logging
import re
import shutil
import unicodedata

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from flax import nnx

from tests.support import NESTED_JSON
from w2v_jax.data import CORPUS_DIR, default_manifest
from w2v_jax.data.labels import (
    EMPTY_TRANSCRIPT,
    LONGER_THAN_FRAMES,
    LabelSet,
    build_vocabulary,
    label_path,
    letters_to_words,
    normalize_text,
    pad_labels,
    read_label_lines,
    read_label_tokens,
    words_to_letters,
    write_corpus_labels,
)
from w2v_jax.data.manifest import read_manifest, write_manifest
from w2v_jax.data.pipeline import LONGER_THAN_MAX_SAMPLE_SIZE, make_train_iterator
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.feature_encoder import FeatureEncoder

ENCODER = FeatureEncoder(d_model=1, rngs=nnx.Rngs(0))  # only its length arithmetic is used


def frames_to_samples(frames: int) -> int:
    """Fewest samples giving `frames` encoder frames (receptive field 400, stride 320)."""
    return 400 + 320 * (frames - 1)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Der Bäcker an der Ecke backt, jeden Morgen.", "der bäcker an der ecke backt jeden morgen"),
        ("L’homme  d'État!\tÇa va?\n", "l'homme d'état ça va"),
        ("Cafe\u0301 well-known: «oui» ¿Qué?", "café well known oui qué"),
        ("a|b  100% $5", "a b 100 $5"),
        ("  ...  ", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(st.text(max_size=40))
def test_normalize_text_is_idempotent_and_clean(text):
    normal = normalize_text(text)
    assert normalize_text(normal) == normal
    assert normal == unicodedata.normalize("NFC", normal) and normal == " ".join(normal.split())
    assert "|" not in normal and not any(unicodedata.category(c).startswith("P") and c != "'" for c in normal)


def test_letters_follow_fairseq():
    assert words_to_letters("The cat, sat.") == list("the|cat|sat|")
    assert letters_to_words(list("the|cat|sat|")) == "the cat sat"
    assert words_to_letters("") == []


def _corpus(tmp_path, lengths_in_frames, **label_files):
    manifest = tmp_path / "train.tsv"
    write_manifest(
        manifest,
        ".",
        [f"u{i}.flac" for i in range(len(lengths_in_frames))],
        [frames_to_samples(f) for f in lengths_in_frames],
    )
    for extension, lines in label_files.items():
        label_path(manifest, extension).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return manifest


def test_ltr_is_read_normalised_and_derived_from_wrd_when_missing(tmp_path):
    words = ["THE CAT.", "Don’t go"]
    manifest = _corpus(tmp_path, [20, 20], wrd=words)
    derived = read_label_tokens(manifest, "ltr", 2)
    assert derived == [list("the|cat|"), list("don't|go|")]
    label_path(manifest, "ltr").write_text("T H E | C A T |\nD O N ' T | G O |\n", encoding="utf-8")  # LibriSpeech
    assert read_label_tokens(manifest, "ltr", 2) == derived


def test_missing_or_misaligned_label_files_name_both_files(tmp_path):
    manifest = _corpus(tmp_path, [20, 20, 20], wrd=["a", "b"])
    with pytest.raises(ValueError, match=rf"{tmp_path / 'train.wrd'} has 2 lines but the manifest {manifest} has 3"):
        read_label_tokens(manifest, "ltr", 3)
    with pytest.raises(ValueError, match=rf"{manifest}: label file {tmp_path / 'train.phn'} not found"):
        read_label_tokens(manifest, "phn", 3)
    label_path(manifest, "wrd").unlink()
    with pytest.raises(ValueError, match=rf"{manifest}: neither {tmp_path / 'train.ltr'} nor {tmp_path / 'train.wrd'}"):
        read_label_tokens(manifest, "ltr", 3)
    with pytest.raises(ValueError, match="label kind"):
        read_label_tokens(manifest, "wrd", 3)
    with pytest.raises(ValueError, match="labels need a manifest file"):
        build_vocabulary(tmp_path, "ltr")


def test_rows_end_only_at_newlines(tmp_path):
    manifest = _corpus(tmp_path, [20, 20], wrd=["\ufeffa\u2028b\r", ""])  # BOM, CRLF
    assert read_label_lines(manifest, "wrd", 2) == ["a\u2028b", ""]


def test_label_set_encodes_counts_and_skips(tmp_path, caplog):
    vocabulary = Vocabulary.from_symbols("abc")
    # Frames needed: labels + repeats. "aab" -> 3 letters + "|" = 4 tokens, 1 repeat: 5 frames.
    manifest = _corpus(tmp_path, [5, 4, 30, 30, 2, 30], wrd=["aab", "aab", "", "!?", "ab", "a x c"])
    with caplog.at_level(logging.WARNING, logger="w2v_jax.data"):
        labels = LabelSet(manifest, "ltr", vocabulary, ENCODER.compute_output_length)
    assert len(labels) == 6
    np.testing.assert_array_equal(labels.encode(0), vocabulary.encode(list("aab|"))[0])
    assert labels.encode(1) == LONGER_THAN_FRAMES  # 5 frames needed, 4 available
    assert labels.encode(2) == EMPTY_TRANSCRIPT and labels.encode(3) == EMPTY_TRANSCRIPT  # punctuation only
    assert labels.encode(4) == LONGER_THAN_FRAMES  # "ab|" needs 3 frames, has 2
    assert labels.encode(5).tolist() == [5, 4, 3, 4, 7, 4]  # x -> <unk>
    assert labels.skip_counts() == {EMPTY_TRANSCRIPT: 2, LONGER_THAN_FRAMES: 2}
    assert labels.usable_indices().tolist() == [0, 5]
    assert labels.num_unknown() == 1 and labels.unknown_symbols == {"x": 1}
    assert labels.reference(5) == "a x c"
    assert labels.summary() == (
        "ltr labels: 2 of 6 rows usable; skipped (empty_transcript: 2, "
        "transcript_longer_than_frames: 2); 1 symbols mapped to <unk>"
    )
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skipped) == 4 and str(tmp_path / "u1.flac") in skipped[0] and "5 frames needed" in skipped[0]
    assert any("mapped to <unk>" in r.getMessage() for r in caplog.records)


def test_phone_labels(tmp_path):
    vocabulary = Vocabulary.from_symbols(["aɪ", "t"])
    manifest = _corpus(tmp_path, [10, 10], phn=["t aɪ  t", "ɑ\u0303 t"])
    labels = LabelSet(manifest, "phn", vocabulary, ENCODER.compute_output_length)
    assert labels.encode(0).tolist() == [vocabulary.token_to_id[t] for t in ["t", "aɪ", "t"]]
    assert labels.reference(0) == "t aɪ t" and labels.unknown_symbols == {"ɑ̃": 1}  # NFC-composed


def test_corpus_labels_regenerate_identically_and_match_manifests(tmp_path):
    for name in ("metadata.jsonl", "train.tsv", "valid.tsv"):
        shutil.copy(CORPUS_DIR / name, tmp_path / name)
    written = write_corpus_labels(tmp_path)
    assert len(written) == 6
    for path in written:
        shipped = CORPUS_DIR / path.name
        assert path.read_bytes() == shipped.read_bytes(), path.name
        manifest = read_manifest(CORPUS_DIR / f"{path.stem}.tsv")
        assert len(read_label_lines(CORPUS_DIR / f"{path.stem}.tsv", path.suffix[1:], len(manifest))) == len(manifest)
    # setup.cfg's package_data pattern (data/corpus/**/*) ships them.
    shipped = {p.split("/")[-1] for p in glob.glob(str(CORPUS_DIR / "**" / "*"), recursive=True)}
    assert {p.name for p in written} <= shipped


@pytest.mark.parametrize(
    "line, problem",
    [(NESTED_JSON, "JSON nested deeper .*"), ('"b.flac"', "expected a JSON object at the top level, found a string")],
)
def test_corpus_metadata_that_is_unreadable_is_named_with_its_line(tmp_path, line, problem):
    (tmp_path / "metadata.jsonl").write_text('{"path": "a.flac", "text": "a"}\n' + line + "\n")
    path = re.escape(str(tmp_path / "metadata.jsonl"))
    with pytest.raises(ValueError, match=rf"^{path}: {problem} \(line 2\)$"):
        write_corpus_labels(tmp_path)


def test_corpus_rows_follow_the_metadata():
    manifest = read_manifest(CORPUS_DIR / "valid.tsv")
    words = read_label_lines(CORPUS_DIR / "valid.tsv", "wrd", len(manifest))
    phones = read_label_lines(CORPUS_DIR / "valid.tsv", "phn", len(manifest))
    assert manifest.paths[0] == "audio/en/en_00_0.flac"
    assert words[0].startswith("The old lighthouse keeper") and phones[0].startswith("ð ɪ oʊ l d")
    assert "_" not in " ".join(phones).split()


@pytest.mark.parametrize("kind", ["ltr", "phn"])
def test_corpus_vocabulary_covers_training_labels(kind, tmp_path):
    vocabulary = build_vocabulary(CORPUS_DIR / "train.tsv", kind)
    assert vocabulary.tokens[:5] == ("<pad>", "<s>", "</s>", "<unk>", "|")
    assert Vocabulary.load(vocabulary.save(tmp_path)) == vocabulary
    train = LabelSet(CORPUS_DIR / "train.tsv", kind, vocabulary, ENCODER.compute_output_length)
    assert train.num_unknown() == 0 and sum(train.skip_counts().values()) == 0
    valid = LabelSet(CORPUS_DIR / "valid.tsv", kind, vocabulary, ENCODER.compute_output_length)
    assert sum(valid.skip_counts().values()) == 0


def test_pad_labels():
    padded = pad_labels([np.array([5, 6, 7]), np.array([], np.int32), np.array([8])])
    assert padded.dtype == np.int32
    np.testing.assert_array_equal(padded, [[5, 6, 7], [-100, -100, -100], [8, -100, -100]])
    assert pad_labels([np.array([5])], length=4).tolist() == [[5, -100, -100, -100]]
    with pytest.raises(ValueError, match="length 3 do not fit in length 2"):
        pad_labels([np.array([5, 6, 7])], length=2)


def test_labelled_batches_are_whole_utterances_with_their_labels(tmp_path):
    """The input pipeline with a LabelSet: padded, never cropped; each row carries its own labels."""

    manifest_path = default_manifest("train")
    manifest = read_manifest(manifest_path)
    labels = LabelSet(manifest_path, "ltr", build_vocabulary(manifest_path, "ltr"), ENCODER.compute_output_length)
    max_samples = int(np.sort(manifest.num_samples)[-10])  # the 9 longest utterances can't be used
    kwargs = dict(
        batch_size=4,
        seed=1,
        max_sample_size=max_samples,
        min_sample_size=0,
        pad=True,
        num_workers=0,
        num_buckets=4,
        labels=labels,
    )
    with make_train_iterator(manifest_path, **kwargs) as iterator:
        label_length = iterator.config.label_length
        assert label_length == max(len(labels.encode(int(i))) for i in labels.usable_indices())
        for number in range(6):
            rows = iterator.planned_files(number)
            batch = next(iterator)
            assert batch["labels"].shape == (4, label_length) and batch["labels"].dtype == np.int32
            for slot, row in enumerate(rows):
                np.testing.assert_array_equal(batch["attention_mask"][slot].sum(), manifest.num_samples[row])
                ids = labels.encode(int(row))
                np.testing.assert_array_equal(batch["labels"][slot, : len(ids)], ids)
                assert np.all(batch["labels"][slot, len(ids) :] == -100)
        assert iterator.skip_counts()[LONGER_THAN_MAX_SAMPLE_SIZE] == 9
        assert set(labels.skip_counts()) <= set(iterator.skip_counts())
        state = iterator.get_state()
        expected = next(iterator)
    with make_train_iterator(manifest_path, **kwargs) as resumed:
        resumed.set_state(state)
        for key, value in next(resumed).items():
            np.testing.assert_array_equal(value, expected[key])
    with pytest.raises(ValueError, match="must be padded"):
        make_train_iterator(manifest_path, **(kwargs | dict(pad=False)))
