"""w2v_jax.research.plotting: the CTC alignment figure marks exactly the frames whose argmax isn't the blank."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from w2v_jax.research import plotting

TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "|", "a", "b")


def _logits(frame_ids):
    logits = np.zeros((len(frame_ids), len(TOKENS)))
    logits[np.arange(len(frame_ids)), frame_ids] = 5.0
    return logits


def test_alignment_figure_writes_each_non_blank_frames_symbol_at_its_time():
    frame_ids = [0, 0, 5, 5, 0, 4, 6, 0, 0, 0]
    waveform = np.random.default_rng(0).standard_normal(10 * 320 + 80)
    fig = plotting.ctc_alignment_figure(waveform, _logits(frame_ids), TOKENS, blank_id=0)
    top, bottom = fig.axes
    texts = [(t.get_text(), t.get_position()[0]) for t in top.texts]
    expected = [(TOKENS[i], (t * 320 + 200) / 16_000) for t, i in enumerate(frame_ids) if i != 0]
    assert [name for name, _ in texts] == [name for name, _ in expected]
    np.testing.assert_allclose([x for _, x in texts], [x for _, x in expected])
    assert f"{len(expected)} of 10 frames emit a symbol" in top.get_title()
    blank = bottom.lines[0].get_ydata()
    probability = np.exp(5) / (np.exp(5) + len(TOKENS) - 1)  # softmax of one 5 among zeros
    np.testing.assert_allclose(blank, [probability if i == 0 else 1 / (np.exp(5) + 6) for i in frame_ids])
    plt.close(fig)


def test_an_all_blank_alignment_is_drawn_too():
    """Early in fine-tuning every frame is blank: a figure without symbols, not an error."""
    fig = plotting.ctc_alignment_figure(np.zeros(3280), _logits([0] * 10), TOKENS, blank_id=0)
    assert not fig.axes[0].texts and "0 of 10 frames" in fig.axes[0].get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match=r"\[frames, 7\]"):
        plotting.ctc_alignment_figure(np.zeros(3280), np.zeros((10, 5)), TOKENS, blank_id=0)
