"""w2v_jax/representations.py (the feature API): `load_model` on every checkpoint format, `model.features`
against the model run on each utterance alone, bucketed lengths (no compile per length), group-norm exact and crop."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2v_jax import representations
from w2v_jax.checkpoints import load_model
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.checkpoints.hf import save_hf_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining

LAYER_NORM = Wav2Vec2Config.preset("tiny", feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
GROUP_NORM = Wav2Vec2Config.preset("tiny")
# float32 forward passes of the same weights at different batch and length shapes (matmul and conv
# tiling, attention over padded keys masked out): measured differences up to 4e-6 on these O(1)
# activations.
ATOL = 1e-5


def _waveforms(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in lengths]


@nnx.jit
def _encode_alone(model, waveform):
    out = model.wav2vec2(waveform[None], deterministic=True, output_hidden_states=True)
    return out.last_hidden_state[0], out.extract_features[0], [h[0] for h in out.hidden_states]


def _alone(model, waveform):
    """The model on one utterance: (last hidden state, conv features, hidden states), compiled (one
    program per length instead of a compile per operation)."""
    return _encode_alone(model, jnp.asarray(waveform))


def test_bucket_ladder_pads_up_and_crops_down():
    assert (
        representations.bucket_length(5000, pad=True) == 5382 and representations.bucket_length(5000, pad=False) == 4525
    )
    assert representations.bucket_length(5382, pad=True) == representations.bucket_length(5382, pad=False) == 5382
    ratios = representations.BUCKET_LADDER[1:] / representations.BUCKET_LADDER[:-1]
    assert ratios.max() < 1.2  # padding (or cropping) never costs more than ~19%
    with pytest.raises(ValueError, match="at least 400 samples"):
        representations.bucket_length(399, pad=True)


def test_bucket_ladder_is_the_receptive_field_times_quarter_octaves():
    # The ladder's defining formula (its first implementation): 400 * 2**(k/4), k < 96, rounded.
    expected = np.unique(np.round(400 * 2.0 ** (np.arange(96) / 4)).astype(np.int64))
    assert representations.BUCKET_LADDER.dtype == np.int64 and len(expected) == 96
    np.testing.assert_array_equal(representations.BUCKET_LADDER, expected)


def test_layer_norm_features_match_each_utterance_alone_with_a_compile_per_bucket(monkeypatch):
    model = Wav2Vec2ForPreTraining(LAYER_NORM, rngs=nnx.Rngs(0))
    # 5000 and 5300 share the 5382 bucket, 9000 is in 9051: two compiles, then none for 5100.
    monkeypatch.setattr(
        representations,
        "_forward",
        nnx.jit(
            chex.assert_max_traces(representations._encode, n=2),
            static_argnames=("output_hidden_states", "group_norm"),
        ),
    )
    waveforms = _waveforms((9000, 5000, 5300))
    got = model.features(waveforms, output_hidden_states=True, batch_size=2)
    model.features(_waveforms((5100,)), output_hidden_states=True, batch_size=2)  # no new compile
    for waveform, feats in zip(waveforms, got):
        last, conv, hidden = _alone(model, waveform)
        assert feats.num_samples == len(waveform) and feats.last_hidden_state.shape == last.shape
        np.testing.assert_allclose(feats.last_hidden_state, last, atol=ATOL)
        np.testing.assert_allclose(feats.extract_features, conv, atol=ATOL)
        assert len(feats.hidden_states) == LAYER_NORM.num_hidden_layers + 1
        for a, b in zip(feats.hidden_states, hidden):
            np.testing.assert_allclose(a, b, atol=ATOL)


def test_group_norm_exact_runs_each_utterance_alone_and_crop_uses_the_bucket_below():
    model = Wav2Vec2ForPreTraining(GROUP_NORM, rngs=nnx.Rngs(1))
    waveforms = _waveforms((5000, 7000))
    exact = model.features(waveforms)
    cropped = model.features(waveforms, group_norm="crop")
    assert exact[0].hidden_states is None
    for waveform, e, c in zip(waveforms, exact, cropped):
        np.testing.assert_allclose(e.last_hidden_state, _alone(model, waveform)[0], atol=ATOL)
        length = representations.bucket_length(len(waveform), pad=False)
        assert c.num_samples == length < len(waveform)
        np.testing.assert_allclose(c.last_hidden_state, _alone(model, waveform[:length])[0], atol=ATOL)


def test_group_norm_masked_batches_very_different_lengths_exactly(monkeypatch):
    model = Wav2Vec2ForPreTraining(GROUP_NORM, rngs=nnx.Rngs(1))
    # 1200 and 1300 share a bucket; 20000 is 16x longer than 1200, in the same batch of the default
    # ("padded") statistics this would move every frame (test_ctc_model checks the logits).
    monkeypatch.setattr(
        representations,
        "_forward",
        nnx.jit(
            chex.assert_max_traces(representations._encode, n=3),
            static_argnames=("output_hidden_states", "group_norm"),
        ),
    )
    waveforms = _waveforms((20000, 1200, 7000, 1300), seed=3)
    got = model.features(waveforms, output_hidden_states=True, batch_size=4, group_norm="masked")
    for waveform, feats in zip(waveforms, got):
        last, conv, hidden = _alone(model, waveform)
        assert feats.num_samples == len(waveform) and feats.last_hidden_state.shape == last.shape
        np.testing.assert_allclose(feats.last_hidden_state, last, atol=ATOL)
        np.testing.assert_allclose(feats.extract_features, conv, atol=ATOL)
        for a, b in zip(feats.hidden_states, hidden):
            np.testing.assert_allclose(a, b, atol=ATOL)


def test_features_name_bad_input():
    model = Wav2Vec2ForPreTraining(GROUP_NORM, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"waveform 1 must be \[samples\], got shape \(2, 800\)"):
        model.features([np.zeros(800, np.float32), np.zeros((2, 800), np.float32)])
    with pytest.raises(ValueError, match="group_norm must be one of"):
        model.features([np.zeros(800, np.float32)], group_norm="pad")


@pytest.mark.parametrize("save", [save_checkpoint, save_hf_checkpoint])
def test_load_model_loads_our_and_transformers_folders(tmp_path, save):
    model = Wav2Vec2ForPreTraining(dataclasses.replace(GROUP_NORM, hidden_dropout=0.0), rngs=nnx.Rngs(2))
    save(model.config, model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    for a, b in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)), jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(a, b)
