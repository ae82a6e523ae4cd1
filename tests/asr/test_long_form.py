"""w2v_jax/asr/long_form.py: chunk plans tile the frames exactly once, stitched logits equal the
whole recording's for a model whose frames see only their receptive field, chunked transcription,
the same transcripts with the batch spread over two devices."""

import json
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from flax import nnx

from tests.support import HANG_TIMEOUT, REPO
from tests.support.ctc import LAYER_CONFIG, VOCABULARY
from tests.support.launchers import subprocess_env
from w2v_jax.asr import long_form
from w2v_jax.asr.decoding import GreedyDecoder
from w2v_jax.asr.transcription import transcribe
from w2v_jax.model import Wav2Vec2ForCTC

FRAME, FIELD = 320, 400


def num_frames(n):
    return max((n - FIELD) // FRAME + 1, 0)


def local_forward(x, mask):
    """A 'model' whose frame t is a function of its 400 samples only (3 'logits': sum, max, first):
    chunked logits must equal the whole recording's everywhere."""
    frames = num_frames(x.shape[1])
    windows = np.stack([x[:, t * FRAME : t * FRAME + FIELD] for t in range(frames)], axis=1)
    return np.stack([windows.sum(-1), windows.max(-1), windows[..., 0]], axis=-1)


@hypothesis.settings(deadline=None, max_examples=60)
@hypothesis.given(
    num_samples=st.integers(min_value=400, max_value=200_000),
    chunk_frames=st.integers(min_value=8, max_value=200),
    stride_frames=st.integers(min_value=2, max_value=60),
)
def test_kept_frames_tile_the_recording_exactly_once(num_samples, chunk_frames, stride_frames):
    hypothesis.assume(chunk_frames > 2 * stride_frames)
    chunk, stride = chunk_frames * FRAME, stride_frames * FRAME
    chunks = long_form.plan_chunks(num_samples, chunk, stride, frame_stride=FRAME, num_frames=num_frames)
    kept = np.concatenate([np.arange(*c.keep) + c.start // FRAME for c in chunks])
    np.testing.assert_array_equal(kept, np.arange(num_frames(num_samples)))
    for c in chunks:  # every kept frame is one the chunk computed from real samples
        assert 0 <= c.keep[0] <= c.keep[1] <= num_frames(c.num_samples)
    assert chunks[0].start == 0 and chunks[-1].start + chunks[-1].num_samples == num_samples


@pytest.mark.parametrize("num_samples", [5_000, 64_000, 97_123])
def test_stitched_logits_equal_the_whole_recordings(num_samples):
    waveform = np.random.default_rng(num_samples).standard_normal(num_samples).astype(np.float32)
    chunk, stride = long_form.chunk_samples(
        0.6, None, sample_rate=16_000, frame_stride=FRAME, receptive_field=FIELD
    )  # 9600 samples, 1600 on each side
    assert (chunk, stride) == (9600, 1600)
    stitched = long_form.stitched_logits(
        local_forward,
        waveform,
        chunk=chunk,
        stride=stride,
        batch_size=3,
        frame_stride=FRAME,
        num_frames=num_frames,
        receptive_field=FIELD,
    )
    np.testing.assert_array_equal(stitched, local_forward(waveform[None], None)[0])


def test_bad_chunk_settings_are_named():
    with pytest.raises(ValueError, match="longer than twice stride_s"):
        long_form.chunk_samples(1.0, 0.5, sample_rate=16_000, frame_stride=FRAME, receptive_field=FIELD)
    with pytest.raises(ValueError, match="shorter than one frame's 400 samples"):
        long_form.chunk_samples(1.0, 0.01, sample_rate=16_000, frame_stride=FRAME, receptive_field=FIELD)


def test_transcribe_chunks_only_recordings_longer_than_a_chunk(monkeypatch):
    model = Wav2Vec2ForCTC(LAYER_CONFIG, rngs=nnx.Rngs(3))
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 300  # varied argmax per frame
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(n).astype(np.float32) for n in (4000, 40_000)]
    whole = transcribe(model, waveforms, VOCABULARY, batch_size=2)
    stitched = []
    real = long_form.stitched_logits
    monkeypatch.setattr(long_form, "stitched_logits", lambda *a, **k: stitched.append(real(*a, **k)) or stitched[-1])
    chunked = transcribe(model, waveforms, VOCABULARY, batch_size=2, chunk_s=1.0)
    assert chunked[0] == whole[0]  # no longer than a chunk: decoded whole
    assert len(stitched) == 1 and stitched[0].shape == (model.num_frames(40_000), len(VOCABULARY))
    assert chunked[1] == GreedyDecoder(VOCABULARY).decode(stitched[0]).text != ""


def test_each_long_recording_is_decoded_before_the_next_one_runs(monkeypatch):
    """Only the current recording's chunks and logits are held: its logits reach the decoder before
    the next long recording's chunks run (before streaming, every long recording's logits were made
    first and all decoded after)."""
    model = Wav2Vec2ForCTC(LAYER_CONFIG, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(n).astype(np.float32) for n in (40_000, 4000, 36_000, 44_000)]
    events = []
    real = long_form.stitched_logits

    def stitched_logits(forward, waveform, **kwargs):
        events.append(("run", len(waveform)))
        return real(forward, waveform, **kwargs)

    class Decoder(GreedyDecoder):
        def decode(self, logits, length=None):
            events.append(("decode", len(logits[:length])))
            return super().decode(logits, length)

    monkeypatch.setattr(long_form, "stitched_logits", stitched_logits)
    transcribe(model, waveforms, VOCABULARY, batch_size=2, decoder=Decoder(VOCABULARY), chunk_s=1.0)
    frames = {n: model.num_frames(n) for n in (40_000, 36_000, 44_000)}
    assert events[:6] == [
        ("run", 40_000),
        ("decode", frames[40_000]),
        ("run", 36_000),
        ("decode", frames[36_000]),
        ("run", 44_000),
        ("decode", frames[44_000]),
    ]
    assert events[6:] == [("decode", model.num_frames(4000))]  # the short one, whole


_ON_DEVICES = """
import json, numpy as np, jax
from flax import nnx
from tests.support.ctc import CONFIG, VOCABULARY
from w2v_jax.asr.transcription import transcribe
from w2v_jax.model import Wav2Vec2ForCTC
model = Wav2Vec2ForCTC(CONFIG, rngs=nnx.Rngs(3))
model.lm_head.kernel[...] = model.lm_head.kernel[...] * 300
rng = np.random.default_rng(0)
waveforms = [rng.standard_normal(n).astype(np.float32) for n in (4000, 7000, 4000, 5200, 9100, 40000)]
print(json.dumps([jax.device_count(), transcribe(model, waveforms, VOCABULARY, batch_size=2, chunk_s=1.0)]))
"""


def test_chunks_and_utterances_spread_over_two_devices_give_the_same_transcripts(compilation_cache):
    results = []
    for devices in (1, 2):
        out = subprocess.run(
            [sys.executable, "-c", _ON_DEVICES],
            cwd=REPO,
            env=subprocess_env(compilation_cache, devices),
            capture_output=True,
            text=True,
            timeout=HANG_TIMEOUT,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        results.append(json.loads(out.stdout.splitlines()[-1]))
    assert [r[0] for r in results] == [1, 2]
    assert results[0][1] == results[1][1] and all(results[0][1])
