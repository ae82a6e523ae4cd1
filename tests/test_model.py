"""Wav2Vec2ForPreTraining: reductions against NumPy oracles, sampling inside jit, padding, dtypes, errors.

(Numerical equality with transformers is tests/test_model_parity.py.)
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.contrastive_loss import (
    contrastive_loss_from_scratch,
    cosine_similarity_from_scratch,
    sample_negative_indices,
)
from w2v_jax.layers import dropout, layer_norm, named_key
from w2v_jax.model import Wav2Vec2ForPreTraining, Wav2Vec2Model
from w2v_jax.training_draws import sample_gumbel_noise, sample_masks_and_negatives

# fairseq BASE's objective (feature penalty 10, gradient x0.1); one layer keeps compile times short.
CONFIG = Wav2Vec2Config.preset("tiny", num_hidden_layers=1)
SAMPLES = 8000  # 24 frames
LENGTHS = np.array([SAMPLES, 5600])  # 24 and 17 real frames


@functools.lru_cache(maxsize=None)
def _model(config=CONFIG, dtype=None):
    return Wav2Vec2ForPreTraining(config, dtype=dtype, rngs=nnx.Rngs(0))


@functools.lru_cache(maxsize=None)
def _apply(config=CONFIG, dtype=None, **static):
    """The model under jax.jit (split once, merge inside), with static keyword arguments bound."""
    graphdef, state = nnx.split(_model(config, dtype))

    @jax.jit
    def apply(state, *args, **kwargs):
        return nnx.merge(graphdef, state)(*args, **kwargs, **static)

    return functools.partial(apply, state)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    attention_mask = (np.arange(SAMPLES)[None, :] < LENGTHS[:, None]).astype(np.int32)
    waveforms = (rng.standard_normal((2, SAMPLES)) * attention_mask).astype(np.float32)
    return waveforms, attention_mask


def _real_frames(model):
    time = model.num_frames(SAMPLES)
    lengths = np.array([model.num_frames(int(n)) for n in LENGTHS])
    return np.arange(time)[None, :] < lengths[:, None]


def _mask_and_negatives(real):
    """A mask reaching into row 1's padding, and transformers-format distractors among the real masked frames."""
    time = real.shape[1]
    mask = np.zeros((2, time), bool)
    mask[0, 2:14] = mask[1, 3:12] = True
    mask[1, 20:] = True  # padding: dropped from the mask
    rng = np.random.default_rng(0)
    negatives = np.zeros((2, time, CONFIG.num_negatives), np.int64)
    for b in range(2):
        negatives[b] = b * time + rng.choice(np.flatnonzero(mask[b] & real[b]), (time, CONFIG.num_negatives))
    return mask, negatives


def test_training_step_samples_masks_inside_jit():
    waveforms, attention_mask = _batch()
    apply = _apply(deterministic=False)
    out = apply(waveforms, attention_mask, key=jax.random.key(0), gumbel_temperature=1.5)
    time = _model().num_frames(SAMPLES)
    chex.assert_shape([out.projected_states, out.projected_quantized_states], (2, time, CONFIG.proj_codevector_dim))
    for field in ("loss", "contrastive_loss", "diversity_loss", "feature_penalty", "accuracy", "codevector_perplexity"):
        value = getattr(out, field)
        chex.assert_shape(value, ())
        assert value.dtype == jnp.float32 and np.isfinite(value), field
    mask = np.asarray(out.mask_time_indices)
    assert not mask[~_real_frames(_model())].any()  # padding is never masked
    assert int(out.num_masked) == mask.sum() > 0
    assert 0.0 <= float(out.accuracy) <= 1.0
    np.testing.assert_allclose(
        out.loss,
        out.contrastive_loss
        + CONFIG.diversity_loss_weight * out.diversity_loss
        + CONFIG.feature_penalty_weight * out.feature_penalty,
        rtol=1e-6,
    )
    # The key decides everything: the same key repeats the step, another draws another mask.
    again = apply(waveforms, attention_mask, key=jax.random.key(0), gumbel_temperature=1.5)
    np.testing.assert_array_equal(again.loss, out.loss)
    other = apply(waveforms, attention_mask, key=jax.random.key(1), gumbel_temperature=1.5)
    assert not np.array_equal(other.mask_time_indices, mask)


def test_public_samplers_reproduce_the_models_own_draws():
    """sample_masks_and_negatives / sample_gumbel_noise draw what the model draws for a key."""
    model = _model()
    waveforms, attention_mask = _batch()
    key = jax.random.key(7)
    apply = _apply(deterministic=False)
    out = apply(waveforms, attention_mask, key=key)
    time = model.num_frames(SAMPLES)
    mask, negatives = sample_masks_and_negatives(key, CONFIG, 2, time, model.num_frames(attention_mask.sum(-1)))
    chex.assert_shape(negatives, (2, time, CONFIG.num_negatives))
    assert negatives.dtype == jnp.int32 and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(out.mask_time_indices, mask)
    flat = np.asarray(negatives) + np.arange(2)[:, None, None] * time  # transformers' format
    explicit = apply(waveforms, attention_mask, mask, negative_indices=negatives, key=key)
    transformers_format = apply(waveforms, attention_mask, mask, flat, key=key)
    for other in (explicit, transformers_format):
        for field in ("loss", "num_correct", "projected_states", "projected_quantized_states", "codevector_indices"):
            np.testing.assert_array_equal(getattr(other, field), getattr(out, field), err_msg=field)

    # The Gumbel noise: the hard codeword choice is argmax(logits + noise) of the quantizer's logits.
    config = CONFIG.replace(feat_quantizer_dropout=0.0)
    out = _apply(config, deterministic=False)(waveforms, attention_mask, key=key)
    quantizer = _model(config).quantizer
    logits = quantizer.weight_proj(out.extract_features).reshape(2, time, CONFIG.num_codevector_groups, -1)
    noise = sample_gumbel_noise(key, config, 2, time)
    chex.assert_shape(noise, (2, time, CONFIG.num_codevector_groups, CONFIG.num_codevectors_per_group))
    np.testing.assert_array_equal(out.codevector_indices, np.argmax(logits + noise, axis=-1))


def test_encoder_outputs_and_hidden_states():
    """Wav2Vec2ForPreTraining's encoder outputs are Wav2Vec2Model's; the hidden states are per layer."""
    model = _model()
    waveforms, attention_mask = _batch()
    out = _apply(output_hidden_states=True)(waveforms, attention_mask)
    encoder = nnx.jit(lambda m, *a, **k: m(*a, **k), static_argnames="output_hidden_states")
    base = encoder(model.wav2vec2, waveforms, attention_mask, output_hidden_states=True)
    time = model.num_frames(SAMPLES)
    chex.assert_shape(out.extract_features, (2, time, CONFIG.conv_dim[-1]))
    chex.assert_shape(out.last_hidden_state, (2, time, CONFIG.hidden_size))
    chex.assert_shape(out.codevector_indices, (2, time, CONFIG.num_codevector_groups))
    assert len(out.hidden_states) == CONFIG.num_hidden_layers + 1
    np.testing.assert_allclose(out.last_hidden_state, base.last_hidden_state, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.extract_features, base.extract_features, rtol=1e-6, atol=1e-6)
    # post-LN: the last layer's output is the context network's output.
    np.testing.assert_allclose(out.hidden_states[-1], out.last_hidden_state, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(base.padding_mask, _real_frames(model))
    c = np.asarray(model.project_hid(out.last_hidden_state))
    np.testing.assert_allclose(out.projected_states, c, rtol=1e-5, atol=1e-6)
    assert _apply()(waveforms, attention_mask).hidden_states is None


def test_encoder_alone_masks_only_in_training():
    config = CONFIG.replace(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
    encoder = Wav2Vec2Model(config, rngs=nnx.Rngs(0))
    waveforms, attention_mask = _batch()
    key = jax.random.key(3)
    train = encoder(waveforms, attention_mask, deterministic=False, key=key)
    time = encoder.num_frames(SAMPLES)
    mask, _ = sample_masks_and_negatives(key, config, 2, time, encoder.frame_lengths(attention_mask))
    np.testing.assert_array_equal(train.mask_time_indices, mask)
    assert encoder(waveforms, attention_mask, key=key).mask_time_indices is None  # evaluation: no masking
    # Without time masking (fine-tuning with mask_time_prob=0) a training key only drives dropout.
    plain = Wav2Vec2Model(config.replace(mask_time_prob=0.0), rngs=nnx.Rngs(0))
    assert plain(waveforms, attention_mask, deterministic=False, key=key).mask_time_indices is None


def test_losses_are_the_reference_reductions_of_the_outputs():
    """Explicit mask and distractors: contrastive loss, accuracy, diversity and penalty from NumPy."""
    model = _model()
    waveforms, attention_mask = _batch()
    real = _real_frames(model)
    time = real.shape[1]
    mask, negatives = _mask_and_negatives(real)
    effective = mask & real
    out = _apply()(waveforms, attention_mask, mask, negatives, key=jax.random.key(0))
    np.testing.assert_array_equal(out.mask_time_indices, effective)
    assert int(out.num_masked) == effective.sum()

    c = np.asarray(out.projected_states, np.float64)
    q = np.asarray(out.projected_quantized_states, np.float64)
    losses, correct, chance = [], [], []
    for b, t in zip(*np.nonzero(effective)):
        distractors = q[b, negatives[b, t] - b * time]
        temperature = CONFIG.contrastive_logits_temperature
        losses.append(contrastive_loss_from_scratch(c[b, t], q[b, t], distractors, temperature))
        positive = cosine_similarity_from_scratch(c[b, t], q[b, t])
        others = [cosine_similarity_from_scratch(c[b, t], d) for d in distractors if not np.array_equal(d, q[b, t])]
        correct.append(all(positive > o for o in others))
        chance.append(1 / (1 + len(others)))
    np.testing.assert_allclose(out.contrastive_loss, np.sum(losses), rtol=1e-5)
    assert out.num_correct.dtype == jnp.int32 and int(out.num_correct) == np.sum(correct)
    np.testing.assert_allclose(out.accuracy, np.mean(correct), rtol=1e-6)
    np.testing.assert_allclose(out.chance_correct, np.sum(chance), rtol=1e-6)
    np.testing.assert_allclose(out.chance_accuracy, np.mean(chance), rtol=1e-6)
    num_vars = CONFIG.num_codevector_groups * CONFIG.num_codevectors_per_group
    np.testing.assert_allclose(
        out.diversity_loss, (num_vars - out.codevector_perplexity) / num_vars * effective.sum(), rtol=1e-6
    )
    features = np.asarray(model.wav2vec2.feature_extractor(jnp.asarray(waveforms)), np.float64)
    penalty = (features[real] ** 2).mean() * effective.sum()
    np.testing.assert_allclose(out.feature_penalty, penalty, rtol=1e-5)


def test_padded_utterance_matches_the_same_utterance_alone():
    # Layer-norm models are independent of padding: a padded row's real frames equal the
    # unpadded utterance's, and so do its quantized targets.
    config = CONFIG.replace(feat_extract_norm="layer", conv_bias=True)
    waveforms, attention_mask = _batch()
    padded = _apply(config)(waveforms, attention_mask)
    alone = _apply(config)(waveforms[1:, : LENGTHS[1]])
    frames = alone.projected_states.shape[1]
    np.testing.assert_allclose(padded.projected_states[1, :frames], alone.projected_states[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        padded.projected_quantized_states[1, :frames], alone.projected_quantized_states[0], rtol=1e-5, atol=1e-5
    )
    assert padded.loss is None  # no key, no mask: nothing to predict


def test_gumbel_choices_follow_softmax_of_the_logits_at_any_temperature():
    # argmax((logits + Gumbel) / tau) is distributed as softmax(logits): tau changes the soft
    # sample the gradient flows through, not the frequencies of the hard choice.
    quantizer = _model().quantizer
    x = jax.random.normal(jax.random.key(0), (1, 2, CONFIG.conv_dim[-1]))
    logits = quantizer.weight_proj(x).reshape(1, 2, CONFIG.num_codevector_groups, -1)
    expected = np.asarray(jax.nn.softmax(logits, axis=-1))
    graphdef, state = nnx.split(quantizer)
    n = 20_000
    for tau in (0.5, 2.0):

        def choices(key, tau=tau):
            return nnx.merge(graphdef, state)(x, temperature=tau, key=key, deterministic=False)[1].indices

        sample = jax.jit(jax.vmap(choices))
        indices = np.asarray(sample(jax.random.split(jax.random.key(1), n)))  # [n, 1, 2, G]
        frequencies = np.eye(CONFIG.num_codevectors_per_group)[indices].mean(0)
        # Each frequency within 4.5 binomial standard errors sqrt(p (1 - p) / n) of its probability
        # (the 1e-4 floor covers p ~ 0): a 10% error in a probability of 0.1 or more is > 4.5 sigma.
        sigma = np.sqrt(expected * (1 - expected) / n)
        assert np.all(np.abs(frequencies - expected) <= 4.5 * sigma + 1e-4), np.max(
            np.abs(frequencies - expected) / sigma
        )


def test_bfloat16_compute_keeps_float32_params_and_losses():
    waveforms, attention_mask = _batch()
    model = _model(dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    mask, negatives = _mask_and_negatives(_real_frames(model))
    half = _apply(dtype=jnp.bfloat16)(waveforms, attention_mask, mask, negatives, key=jax.random.key(0))
    full = _apply()(waveforms, attention_mask, mask, negatives, key=jax.random.key(0))
    assert half.projected_states.dtype == jnp.bfloat16
    assert half.loss.dtype == half.contrastive_loss.dtype == jnp.float32
    # Same parameters, same mask and distractors: the loss agrees to bf16 precision (unit roundoff
    # 2^-8 = 3.9e-3; measured 2.8e-3 relative, bound ~3x).
    np.testing.assert_allclose(half.loss, full.loss, rtol=8e-3)
    # The logits and their softmax are float32 whatever the compute dtype: the contrastive loss
    # of the bf16 vectors equals the float64 oracle's on the same (bf16-rounded) vectors.
    effective = np.asarray(half.mask_time_indices)
    c = np.asarray(half.projected_states.astype(jnp.float32), np.float64)
    q = np.asarray(half.projected_quantized_states.astype(jnp.float32), np.float64)
    time = effective.shape[1]
    oracle = sum(
        contrastive_loss_from_scratch(
            c[b, t], q[b, t], q[b, negatives[b, t] - b * time], CONFIG.contrastive_logits_temperature
        )
        for b, t in zip(*np.nonzero(effective))
    )
    # Measured 1.7e-9 relative; bounded by float32's 1.2e-7 (bf16 logits would be ~1e-3 off).
    np.testing.assert_allclose(half.contrastive_loss, oracle, rtol=1.2e-7)


def test_bfloat16_layer_norm_statistics_are_float32():
    # Frames far from zero mean: bf16 statistics (8-bit mantissa) would lose the deviations
    # entirely; float32 statistics keep them, and only the output is rounded to bf16.
    norm = layer_norm(32, 1e-5, jnp.bfloat16, nnx.Rngs(0))
    rng = np.random.default_rng(0)
    x = (300.0 + rng.standard_normal((4, 32))).astype(np.float32)
    x_half = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)
    expected = (x_half - x_half.mean(-1, keepdims=True)) / np.sqrt(x_half.var(-1, keepdims=True) + 1e-5)
    out = norm(jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    # bf16 output rounding: 2^-8 relative of values up to ~3.
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), expected, atol=3 * 2.0**-8 * 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attention_mask=np.ones((2, 7999), np.int32)), "attention_mask must be"),
        (dict(mask_time_indices=np.ones((2, 23), bool)), "mask_time_indices must be"),
        (dict(sampled_negative_indices=np.zeros((2, 24), np.int64)), "sampled_negative_indices must be"),
        (dict(negative_indices=np.zeros((2, 24), np.int32)), "negative_indices must be"),
        (
            dict(sampled_negative_indices=np.zeros((2, 24, 4)), negative_indices=np.zeros((2, 24, 4), np.int32)),
            "not both",
        ),
        (
            dict(mask_time_indices=np.ones((2, 24), bool), negative_indices=np.full((2, 24, 4), 24, np.int32)),
            r"\[0, 24\)",
        ),
        # Row 1's indices must lie in [24, 48): transformers' flattened layout.
        (
            dict(mask_time_indices=np.ones((2, 24), bool), sampled_negative_indices=np.zeros((2, 24, 4), np.int64)),
            "own utterance",
        ),
        (dict(deterministic=False, key=None), "needs a key"),
        # 4 masked frames per utterance leave 3 distractors for num_negatives=4.
        (dict(mask_time_indices=np.tile(np.arange(24) < 4, (2, 1))), "num_negatives=4"),
    ],
)
def test_bad_inputs_raise_before_any_computation(kwargs, match):
    waveforms, _ = _batch()
    arguments = dict(key=jax.random.key(0)) | kwargs
    with pytest.raises(ValueError, match=match):
        _model()(waveforms, **arguments)


@pytest.mark.parametrize(
    "overrides, samples, match",
    [
        (dict(mask_time_length=10), 2400, "mask_length=10 is longer than the 7 frames"),  # 7 frames
        (dict(mask_time_min_masks=7), SAMPLES, "min_masks=7"),  # 7 spans of 4 can't fit in 24 frames
        (dict(), 399, "receptive field"),
    ],
)
def test_impossible_masking_is_a_clear_error(overrides, samples, match):
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny", **overrides), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        model(np.zeros((1, samples), np.float32), key=jax.random.key(0))


def _eval_inputs():
    """A fixed mask and distractors (frame 4 + k of the same row) for a 24-frame, 2-row batch."""
    mask = np.zeros((2, 24), bool)
    mask[:, 4:16] = True
    negatives = (np.arange(2)[:, None, None] * 24 + 4 + np.arange(CONFIG.num_negatives)).repeat(24, axis=1)
    return mask, negatives


def test_feature_grad_mult_scales_the_encoder_gradient_exactly():
    # BASE's 0.1 against 1.0: the conv stack's gradient is exactly 0.1x (the multiplier is applied
    # once, at the encoder's output), everything downstream of it is unchanged.
    waveforms, _ = _batch()
    mask, negatives = _eval_inputs()

    def grads(mult):
        graphdef, params = nnx.split(Wav2Vec2ForPreTraining(CONFIG.replace(feature_grad_mult=mult), rngs=nnx.Rngs(0)))
        return jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p)(waveforms, None, mask, negatives).loss))(params)

    tenth, full = grads(0.1), grads(1.0)
    # The scaled cotangent rounds differently through the conv stack's backward pass: elementwise
    # relative errors reach 3e-4 where sums cancel, so each leaf is compared by its norm (float32
    # rounding: measured <= 4.2e-7 relative, bound 3x that; a doubled application would be 0.9).
    pairs = zip(
        jax.tree.leaves(tenth["wav2vec2"]["feature_extractor"]),
        jax.tree.leaves(full["wav2vec2"]["feature_extractor"]),
        strict=True,
    )
    for scaled, plain in pairs:
        error = np.linalg.norm(np.asarray(scaled) - 0.1 * np.asarray(plain)) / np.linalg.norm(0.1 * np.asarray(plain))
        assert error < 1.2e-6, error
    chex.assert_trees_all_equal(tenth["wav2vec2"]["feature_projection"], full["wav2vec2"]["feature_projection"])
    chex.assert_trees_all_equal(tenth["quantizer"], full["quantizer"])


def test_feature_projection_and_quantizer_input_dropout_match_oracle():
    # The two dropouts outside the Transformer, on the masks drawn from their documented sub-keys:
    # after the feature projection (before the mask embedding), and on the quantizer's input.
    config = CONFIG.replace(
        feat_proj_dropout=0.3,
        feat_quantizer_dropout=0.25,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
    )
    model = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0))
    waveforms, _ = _batch()
    mask, negatives = _eval_inputs()
    key = jax.random.key(7)
    out = _apply(config, deterministic=False)(waveforms, None, mask, negatives, key=key, gumbel_temperature=1.5)

    def keep(name, rate, shape):
        return dropout(jnp.ones(shape), rate, named_key(key, name), False)

    encoder = model.wav2vec2
    features = encoder.feature_extractor(jnp.asarray(waveforms))
    hidden, normed = encoder.feature_projection(features)
    hidden = hidden * keep("feat_proj_dropout", 0.3, hidden.shape)
    hidden = jnp.where(mask[:, :, None], encoder.masked_spec_embed[...], hidden)
    context = encoder.encoder(hidden)
    quantized, _ = model.quantizer(
        normed * keep("feat_quantizer_dropout", 0.25, normed.shape),
        temperature=1.5,
        key=named_key(key, "gumbel"),
        deterministic=False,
        mask=jnp.asarray(mask),
    )
    np.testing.assert_allclose(out.projected_states, model.project_hid(context), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.projected_quantized_states, model.project_q(quantized), rtol=1e-5, atol=1e-5)


def test_an_utterance_with_one_masked_frame_counts_as_correct_with_zero_loss():
    # Fewer than 2 masked frames: every distractor is the frame itself, all logits but the
    # target's are -inf, the frame's loss is 0 and it counts (fairseq: argmax 0, argmin not 0).
    waveforms, _ = _batch()
    mask = np.zeros((2, 24), bool)
    mask[0, 2:14] = True
    mask[1, 9] = True
    key = jax.random.key(3)
    # Distractors sampled inside jit, where the mask isn't checked (as fairseq and transformers).
    out = _apply()(waveforms, None, jnp.asarray(mask), key=key)
    assert int(out.num_masked) == 13
    c = np.asarray(out.projected_states, np.float64)
    q = np.asarray(out.projected_quantized_states, np.float64)
    negatives = sample_negative_indices(named_key(key, "negatives"), jnp.asarray(mask), CONFIG.num_negatives)
    negatives = np.asarray(negatives)
    assert np.all(negatives[1, 9] == 9)
    losses, correct = [], 0
    for b, t in zip(*np.nonzero(mask)):
        distractors = q[b, negatives[b, t]]
        temperature = CONFIG.contrastive_logits_temperature
        losses.append(contrastive_loss_from_scratch(c[b, t], q[b, t], distractors, temperature))
        positive = cosine_similarity_from_scratch(c[b, t], q[b, t])
        others = [cosine_similarity_from_scratch(c[b, t], d) for d in distractors if not np.array_equal(d, q[b, t])]
        correct += all(positive > o for o in others)
    assert losses[-1] == 0.0
    np.testing.assert_allclose(out.contrastive_loss, np.sum(losses), rtol=1e-5)
    assert int(out.num_correct) == correct


def test_chance_counts_only_distractors_with_other_codewords_in_a_two_codeword_model():
    # G=1, V=2: about half of the distractors have their target's codeword (logit -inf), so the
    # real chance level is far above 1 / (1 + K); the count comes from the codeword choices.
    config = CONFIG.replace(num_codevector_groups=1, num_codevectors_per_group=2, num_negatives=8)
    waveforms, attention_mask = _batch(seed=2)
    real = _real_frames(_model(config))
    mask = np.zeros_like(real)
    mask[0, 1:21] = mask[1, 2:15] = True
    key = jax.random.key(5)
    negatives = np.asarray(sample_negative_indices(key, jnp.asarray(mask), config.num_negatives))
    out = _apply(config)(waveforms, attention_mask, jnp.asarray(mask), negative_indices=jnp.asarray(negatives))
    codes = np.asarray(out.codevector_indices)[..., 0]
    chance = [1 / (1 + np.sum(codes[b, negatives[b, t]] != codes[b, t])) for b, t in zip(*np.nonzero(mask))]
    assert min(chance) < 1 / 3 and max(chance) > 1 / 3  # both codewords in use, collisions common
    np.testing.assert_allclose(out.chance_correct, np.sum(chance), rtol=1e-6)
    assert float(out.chance_accuracy) > 2 / (1 + config.num_negatives)
