"""The generated LibriSpeech-like corpus (w2v_jax.data.generated): its length distribution, and rows
that state their files' true lengths."""

import numpy as np
import soundfile

from w2v_jax.data import generated, load_manifest


def test_lengths_follow_librispeech_train_960():
    seconds = generated.librispeech_like_seconds(100_000, seed=0)
    # LibriSpeech train-960: mean about 12.3 s, most utterances 2-17 s, the longest about 35 s.
    assert 11.8 < seconds.mean() < 12.8
    assert np.mean((seconds >= 2) & (seconds <= 17)) > 0.85
    assert seconds.max() <= generated.MAX_SECONDS and seconds.min() >= 1.0
    assert 13.0 < np.median(seconds) < 15.0  # the segmentation peak
    np.testing.assert_array_equal(seconds, generated.librispeech_like_seconds(100_000, seed=0))  # deterministic


def test_rows_reuse_files_and_state_their_true_length(tmp_path):
    for rate in (16_000, 8_000):
        folder = tmp_path / str(rate)
        path = generated.write_librispeech_like_corpus(folder, num_rows=40, num_files=4, sample_rate=rate)
        manifest = load_manifest(path)
        assert len(manifest) == 40 and len(set(manifest.paths)) <= 4
        for name, length in zip(manifest.paths, manifest.num_samples.tolist()):
            info = soundfile.info(folder / name)
            assert info.samplerate == rate and info.frames == length
        # A second call reuses the folder's corpus.
        assert generated.librispeech_like_manifest(folder, num_rows=7).read_text() == path.read_text()
