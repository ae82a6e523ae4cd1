"""FeatureEncoder against its NumPy oracle, output lengths, and input validation."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2v_jax.feature_encoder import FeatureEncoder, conv1d_from_scratch, feature_encoder_from_scratch

# float32 oracle checks: the NumPy stack accumulates the same sums in another order; 1e-5
# relative (with an absolute floor for values near zero after GELU) covers float32 rounding.
RTOL, ATOL = 1e-5, 1e-5


def test_conv1d_from_scratch_matches_lax_conv():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((3, 50)).astype(np.float32)
    kernel = rng.standard_normal((4, 3, 5)).astype(np.float32)
    for stride in (1, 2, 5):
        ours = conv1d_from_scratch(signal, kernel, stride=stride)
        assert ours.shape == (4, (50 - 5) // stride + 1)
        expected = jax.lax.conv_general_dilated(
            signal[None], kernel, window_strides=(stride,), padding="VALID", dimension_numbers=("NCH", "OIH", "NCH")
        )[0]
        np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=ATOL)


def test_conv1d_from_scratch_rejects_bad_shapes():
    with pytest.raises(ValueError, match="input channels"):
        conv1d_from_scratch(np.zeros((2, 10)), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="shorter than the kernel"):
        conv1d_from_scratch(np.zeros((1, 2)), np.zeros((1, 1, 3)))


def test_layer_configs_and_stride():
    encoder = FeatureEncoder(d_model=8, rngs=nnx.Rngs(0))
    assert FeatureEncoder.LAYER_CONFIGS == [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)]
    assert encoder.total_stride == 320
    assert encoder.receptive_field == 400


@pytest.mark.parametrize(
    "norm,conv_bias,conv_dim",
    [
        ("group", False, None),
        ("layer", True, None),
        ("none", False, None),
        ("layer", False, (8, 12, 12, 16, 16, 8, 24)),
    ],
)
def test_matches_numpy_oracle(norm, conv_bias, conv_dim):
    encoder = FeatureEncoder(d_model=16, conv_dim=conv_dim, conv_bias=conv_bias, norm=norm, rngs=nnx.Rngs(1))
    if conv_bias:  # non-zero biases and norm parameters, so the oracle checks they are applied
        for block in encoder.layers:
            block.conv.bias[...] = jax.random.normal(jax.random.key(2), block.conv.bias.shape)
    for block in encoder.layers:
        if block.norm is not None:
            block.norm.scale[...] = 1.0 + 0.1 * jax.random.normal(jax.random.key(3), block.norm.scale.shape)
            block.norm.bias[...] = 0.1 * jax.random.normal(jax.random.key(4), block.norm.bias.shape)
    waveform = jax.random.normal(jax.random.key(5), (2, 3200), jnp.float32)
    out = jax.jit(lambda m, x: m(x))(encoder, waveform)
    frames = encoder.compute_output_length(3200)
    chex.assert_shape(out, (2, frames, encoder.out_features))
    weights = encoder.to_numpy_weights()
    for b in range(2):
        ref = feature_encoder_from_scratch(np.asarray(waveform[b]), weights=weights, norm=norm, verbose=False)
        np.testing.assert_allclose(np.asarray(out[b]), ref.T, rtol=RTOL, atol=ATOL)


def test_from_scratch_default_weights_shape():
    out = feature_encoder_from_scratch(np.random.default_rng(0).standard_normal(3200), d_model=8, verbose=False)
    assert out.shape == (8, 9)
    assert np.all(np.isfinite(out))


def test_group_norm_output_depends_on_padding():
    # Documented reference behaviour: GroupNorm normalises over time, padding included.
    encode = nnx.jit(lambda m, x: m(x))
    encoder = FeatureEncoder(d_model=8, norm="group", rngs=nnx.Rngs(0))
    wave = jax.random.normal(jax.random.key(0), (1, 3200))
    padded = jnp.pad(wave, ((0, 0), (0, 3200)))
    frames = encoder.compute_output_length(3200)
    assert not np.allclose(encode(encoder, wave), encode(encoder, padded)[:, :frames], atol=1e-3)
    layer = FeatureEncoder(d_model=8, norm="layer", rngs=nnx.Rngs(0))
    # A frame's receptive field ends before the padding starts for the first `frames - 1` frames.
    np.testing.assert_allclose(
        encode(layer, wave)[:, : frames - 1], encode(layer, padded)[:, : frames - 1], rtol=RTOL, atol=ATOL
    )


def test_masked_group_norm_on_a_padded_batch_is_each_waveform_alone():
    # Rows of very different lengths in one zero-padded batch; the oracle runs each one alone.
    encoder = FeatureEncoder(d_model=16, norm="group", rngs=nnx.Rngs(1))
    block = encoder.layers[0]
    block.norm.scale[...] = 1.0 + 0.1 * jax.random.normal(jax.random.key(3), block.norm.scale.shape)
    block.norm.bias[...] = 0.1 * jax.random.normal(jax.random.key(4), block.norm.bias.shape)
    lengths = np.array([9600, 400, 2345, 4001])
    rng = np.random.default_rng(0)
    waveforms = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    batch = np.zeros((len(lengths), lengths.max()), np.float32)
    for row, w in zip(batch, waveforms):
        row[: len(w)] = w
    out = jax.jit(lambda m, x, n: m(x, n))(encoder, jnp.asarray(batch), jnp.asarray(lengths))
    weights = encoder.to_numpy_weights()
    for b, w in enumerate(waveforms):
        ref = feature_encoder_from_scratch(w, weights=weights, norm="group", verbose=False)
        assert ref.shape[1] == encoder.compute_output_length(len(w))
        np.testing.assert_allclose(np.asarray(out[b, : ref.shape[1]]), ref.T, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match=r"num_samples must be \[batch\] = \(4,\), got \(3,\)"):
        encoder(jnp.asarray(batch), jnp.asarray(lengths[:3]))


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(n=st.integers(min_value=400, max_value=4000))
def test_compute_output_length_is_the_real_length(n):
    encoder = _SMALL_ENCODER
    out = jax.eval_shape(lambda x: encoder(x), jax.ShapeDtypeStruct((1, n), jnp.float32))
    assert out.shape[1] == encoder.compute_output_length(n) >= 1
    np.testing.assert_array_equal(encoder.compute_output_length(np.array([n])), [out.shape[1]])


_SMALL_ENCODER = FeatureEncoder(d_model=4, rngs=nnx.Rngs(0))


def test_compute_output_length_below_receptive_field_is_zero():
    assert _SMALL_ENCODER.compute_output_length(399) == 0
    assert int(_SMALL_ENCODER.compute_output_length(jnp.array(10))) == 0


@pytest.mark.parametrize(
    "waveform,match",
    [
        (np.zeros((1, 399), np.float32), "at least 400"),
        (np.zeros((1600,), np.float32), r"\[batch, samples\]"),
        (np.zeros((1, 1, 1600), np.float32), r"\[batch, samples\]"),
        (np.zeros((1, 1600), np.int16), "float"),
    ],
)
def test_bad_input_is_a_clear_value_error(waveform, match):
    with pytest.raises(ValueError, match=match):
        _SMALL_ENCODER(jnp.asarray(waveform))


def test_mismatched_layer_lists():
    with pytest.raises(ValueError, match="same length"):
        FeatureEncoder(conv_dim=(8, 8), conv_kernel=(10,), conv_stride=(5,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="norm"):
        FeatureEncoder(d_model=8, norm="batch", rngs=nnx.Rngs(0))
