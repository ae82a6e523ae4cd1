"""w2v_jax.data.utterances: speakers, frame labels from phoneme spans, equal-length batches."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import NESTED_JSON
from w2v_jax.data import default_manifest
from w2v_jax.data.utterances import (
    Utterance,
    equal_length_batches,
    frame_phone_labels,
    load_utterances,
    read_metadata,
)


def _labels_oracle(phonemes, starts, ends, num_frames):
    out = []
    for t in range(num_frames):
        centre = t * 320 + 200
        hits = [p for p, s, e in zip(phonemes, starts, ends) if s <= centre < e]
        out.append(hits[0] if hits else None)
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 500), st.integers(1, 2000)), min_size=1, max_size=12), st.integers(1, 40))
def test_frame_labels_match_the_centre_sample_oracle(spans, num_frames):
    """Disjoint sorted spans with gaps: each frame gets the phoneme under its centre sample, or None."""
    starts, ends, position = [], [], 0
    for gap, length in spans:
        starts.append(position + gap)
        ends.append(position + gap + length)
        position = ends[-1]
    phonemes = [f"p{i}" for i in range(len(spans))]
    got = frame_phone_labels(phonemes, np.array(starts), np.array(ends), num_frames)
    assert got == _labels_oracle(phonemes, starts, ends, num_frames)


def test_frame_labels_reject_ragged_alignments():
    with pytest.raises(ValueError, match="phonemes"):
        frame_phone_labels(["a", "b"], np.array([0]), np.array([5]), 3)


def test_equal_length_batches_group_lengths_and_fill_the_last_batch():
    waveforms = [np.full(n, i, np.float32) for i, n in enumerate((5, 7, 5, 5))]
    batches = equal_length_batches(waveforms, 2)
    assert [chunk for chunk, _ in batches] == [[0, 2], [3], [1]]
    for chunk, batch in batches:
        assert batch.shape == (2, len(waveforms[chunk[0]]))
        np.testing.assert_array_equal(batch[: len(chunk), 0], chunk)
        np.testing.assert_array_equal(batch[len(chunk) :, 0], chunk[0])  # filler: copies of the first row
    with pytest.raises(ValueError, match="batch_size"):
        equal_length_batches(waveforms, 0)


def test_the_speaker_is_the_voice_variant_in_every_language():
    def speaker(voice):
        return Utterance("x", np.zeros(400, np.float32), None, (), np.zeros(0), np.zeros(0), voice).speaker

    assert speaker("fr+m3") == speaker("en-us+m3") == "m3" and speaker("de+klatt2") == "klatt2"
    assert speaker("en-us") == "en-us" and speaker(None) is None  # no variant: the voice is its own speaker
    loaded = load_utterances(default_manifest("valid"), max_utterances=2)
    assert [u.voice for u in loaded] == ["en-us+f2", "fr+m3"] and [u.speaker for u in loaded] == ["f2", "m3"]


@pytest.mark.parametrize(
    "line, problem",
    [
        (NESTED_JSON, "JSON nested deeper .*"),
        ('"b.flac"', "expected a JSON object at the top level, found a string"),
        ('["b.flac"]', "expected a JSON object at the top level, found an array"),
    ],
)
def test_metadata_lines_are_read_and_an_unreadable_one_is_named_with_its_line(tmp_path, line, problem):
    path = tmp_path / "metadata.jsonl"
    path.write_text('{"path": "a.flac", "text": "x"}\n\n{"path": "b.flac"}\n')
    assert read_metadata(path) == {"a.flac": {"path": "a.flac", "text": "x"}, "b.flac": {"path": "b.flac"}}
    path.write_text('{"path": "a.flac"}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {problem} \(line 2\)$"):
        read_metadata(path)
