"""`Wav2Vec2ForCTC` against transformers' (PyTorch, CPU, float32), and its training-time masking.

Random-init reference models (every parameter perturbed) are saved with `save_pretrained`, loaded
with `w2v_jax.checkpoints.hf.load_hf_checkpoint`, and both frameworks get the same padded batch and labels
padded with -100. In eval mode the logits, the loss (both reductions) and the gradient of the loss
with respect to every parameter must agree. `pytest tests/test_ctc_model.py -s` prints the measured
errors (README, Fine-tuning).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.wav2vec2 import modeling_wav2vec2

from tests.support.parity import CONFIGS, reference_checkpoint, relative_error
from w2v_jax.checkpoints.hf import load_hf_checkpoint, params_to_hf
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.ctc import ctc_loss_from_scratch
from w2v_jax.model import Wav2Vec2ForCTC
from w2v_jax.training_draws import sample_feature_mask, sample_training_masks

# Measured (float32, CPU; XLA on one or several threads): at most 1.2e-6 relative over logits and
# losses, 4.6e-6 over the parameter gradients (docs/finetuning.md); the bounds leave 3-4x.
RTOL = {"outputs": 5e-6, "gradients": 1.5e-5}
VOCAB = 11
CTC_CONFIGS = {
    # BASE's layout (group norm, post-LN): transformers' advice is no attention mask, zero padding.
    "group_post_ln": CONFIGS["group_post_ln"].replace(vocab_size=VOCAB, ctc_loss_reduction="sum"),
    # LARGE's layout with odd sizes, a padded batch and blank id 3.
    "layer_pre_ln_odd": CONFIGS["layer_pre_ln_odd"].replace(vocab_size=VOCAB, pad_token_id=3),
}
SAMPLES = 8000  # 24 frames
LENGTHS = np.array([SAMPLES, 5600])  # 24 and 17 real frames
LABELS = np.array([[1, 5, 5, 2, 7, 9, 4, 4], [6, 2, 8, -100, -100, -100, -100, -100]])


def _batch(padded: bool):
    rng = np.random.default_rng(0)
    waveforms = rng.standard_normal((2, SAMPLES)).astype(np.float32)
    attention_mask = (np.arange(SAMPLES)[None, :] < LENGTHS[:, None]).astype(np.int64)
    waveforms = (waveforms * attention_mask).astype(np.float32)
    return waveforms, attention_mask if padded else None


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CTC_CONFIGS))
def test_logits_losses_and_gradients_match_transformers(name, tmp_path):
    config = CTC_CONFIGS[name]
    reference = reference_checkpoint(config, tmp_path, transformers.Wav2Vec2ForCTC)
    loaded_config, model = load_hf_checkpoint(tmp_path)
    assert loaded_config == config and isinstance(model, Wav2Vec2ForCTC)
    waveforms, attention_mask = _batch(padded=name != "group_post_ln")
    graphdef, params = nnx.split(model, nnx.Param)
    # Both reductions' outputs and gradients from one compiled function.
    ours = jax.jit(
        lambda params: {r: _value_and_grad(config, r, params, waveforms, attention_mask) for r in ("sum", "mean")}
    )(params)

    errors, grad_errors = {}, {}
    for reduction in ("sum", "mean"):
        reference.config.ctc_loss_reduction = reduction
        reference.zero_grad()
        out_ref = reference(
            torch.tensor(waveforms),
            attention_mask=None if attention_mask is None else torch.tensor(attention_mask),
            labels=torch.tensor(LABELS),
        )
        out_ref.loss.backward()
        grads_ref = {k: p.grad.numpy().copy() for k, p in reference.named_parameters() if p.grad is not None}

        out, grads = ours[reduction]
        grads = params_to_hf(grads, config)
        assert set(grads) == set(grads_ref) | {"wav2vec2.masked_spec_embed"}  # unused in eval: no torch grad
        errors["logits"] = relative_error(out.logits, out_ref.logits.detach().numpy())
        errors[f"loss_{reduction}"] = relative_error(out.loss, out_ref.loss.detach().numpy())
        key_biases = [k for k in grads_ref if k.endswith("attention.k_proj.bias")]  # exact gradient 0
        for k in grads_ref:
            if k not in key_biases:
                grad_errors[f"{k} ({reduction})"] = relative_error(grads[k], grads_ref[k])
    worst = max(grad_errors, key=grad_errors.get)
    print(
        f"\n{name} CTC: max relative error over logits and losses {max(errors.values()):.2e} "
        f"({max(errors, key=errors.get)}), over parameter gradients {grad_errors[worst]:.2e} ({worst})"
    )
    assert max(errors.values()) < RTOL["outputs"], errors
    assert grad_errors[worst] < RTOL["gradients"], {k: v for k, v in grad_errors.items() if v >= RTOL["gradients"]}


def _graphdef(config: Wav2Vec2Config, reduction: str) -> nnx.GraphDef:
    return nnx.graphdef(nnx.eval_shape(lambda: Wav2Vec2ForCTC(config.replace(ctc_loss_reduction=reduction))))


def _value_and_grad(config, reduction, params, waveforms, attention_mask):
    """(output, gradient of the loss) of `config`'s model with `params` and `reduction`, in eval mode."""

    def loss(params):
        out = nnx.merge(_graphdef(config, reduction), params)(waveforms, attention_mask, LABELS)
        return out.loss, out

    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return out, grads


def test_loss_is_the_forward_algorithm_on_the_models_logits():
    """The model's loss against the NumPy forward-algorithm oracle on its own logits (both reductions)."""
    config = Wav2Vec2Config.preset("tiny", vocab_size=VOCAB, pad_token_id=3)
    waveforms, attention_mask = _batch(padded=True)
    params = nnx.state(Wav2Vec2ForCTC(config, rngs=nnx.Rngs(0)), nnx.Param)
    # Both reductions from one compiled function (eager mode compiles every operation).
    outputs = jax.jit(
        lambda params: {
            r: nnx.merge(_graphdef(config, r), params)(waveforms, attention_mask, LABELS) for r in ("sum", "mean")
        }
    )(params)
    for reduction in ("sum", "mean"):
        out = outputs[reduction]
        log_probs = np.asarray(jax.nn.log_softmax(out.logits.astype(jnp.float32)), np.float64)
        losses, lengths = [], []
        for row, n, labels in zip(log_probs, np.asarray(out.logit_lengths), LABELS):
            target = [int(t) for t in labels if t >= 0 and t != 3]
            losses.append(ctc_loss_from_scratch(row[:n], target, blank_id=3))
            lengths.append(len(target))
        expected = sum(losses) if reduction == "sum" else np.mean(np.array(losses) / np.array(lengths))
        # float32 log-softmax and recursion over 24 frames: ~1e-6 relative.
        np.testing.assert_allclose(float(out.loss), expected, rtol=1e-5)
        assert list(np.asarray(out.logit_lengths)) == [24, 17]
        assert int(out.num_label_tokens) == 11


def test_training_masks_match_transformers_mask_hidden_states():
    """In training with dropouts and LayerDrop off, our output equals transformers' train-mode output
    when its mask sampler is made to return the masks our model draws (time spans -> masked_spec_embed,
    channel spans -> 0 on every frame)."""
    config = Wav2Vec2Config.preset(
        "tiny",
        feat_extract_norm="layer",
        vocab_size=VOCAB,
        mask_time_prob=0.3,
        mask_time_length=3,
        mask_feature_prob=0.3,
        mask_feature_length=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        feature_penalty_weight=0.0,
        feature_grad_mult=1.0,
    )
    model = Wav2Vec2ForCTC(config, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)
    waveforms, attention_mask = _batch(padded=True)
    key = jax.random.key(7)
    out = jax.jit(lambda state: nnx.merge(graphdef, state)(waveforms, attention_mask, deterministic=False, key=key))(
        state
    )
    # What tools feed another implementation (the PyTorch twin): the masks the model draws.
    time_mask, feature_mask = map(np.asarray, sample_training_masks(key, config, 2, 24, out.logit_lengths))
    np.testing.assert_array_equal(time_mask, out.mask_time_indices)
    np.testing.assert_array_equal(feature_mask, sample_feature_mask(key, config, 2))
    assert feature_mask.any() and time_mask.any() and not feature_mask.all()
    assert sample_training_masks(key, config.replace(mask_time_prob=0.0, mask_feature_prob=0.0), 2, 24) == (None, None)

    reference = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**config.to_hf_dict()))
    reference.load_state_dict({k: torch.tensor(v) for k, v in params_to_hf(nnx.state(model, nnx.Param)).items()})
    reference.train()
    masks = {(2, time_mask.shape[1]): time_mask, (2, config.hidden_size): feature_mask}
    original = modeling_wav2vec2._compute_mask_indices
    modeling_wav2vec2._compute_mask_indices = lambda shape, *args, **kwargs: masks[tuple(shape)]
    try:
        with torch.no_grad():
            logits_ref = reference(torch.tensor(waveforms), attention_mask=torch.tensor(attention_mask)).logits
    finally:
        modeling_wav2vec2._compute_mask_indices = original
    assert relative_error(out.logits, logits_ref.numpy()) < 5e-6  # the eval-mode bound above

    # Without the channel mask the output differs: the mask did something.
    def without_channel_mask(state):
        model = nnx.merge(graphdef, state)
        unmasked = model.wav2vec2.encode(
            waveforms,
            model.wav2vec2.padding_mask(attention_mask, 24),
            out.mask_time_indices,
            feature_mask=jnp.zeros((2, config.hidden_size), bool),
        )
        return model.lm_head(unmasked.last_hidden_state)

    assert relative_error(jax.jit(without_channel_mask)(state), logits_ref.numpy()) > 1e-3


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(mask_feature_length=40), "mask_length=40 is longer"),
        (dict(mask_feature_min_masks=9), "min_masks=9"),
    ],
)
def test_impossible_channel_masking_is_a_clear_error(overrides, match):
    config = Wav2Vec2Config.preset("tiny", mask_feature_prob=0.5, **overrides)
    with pytest.raises(ValueError, match=match):
        Wav2Vec2ForCTC(config)(_batch(False)[0], deterministic=False, key=jax.random.key(0))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(pad_token_id=32), "pad_token_id"),
        (dict(ctc_loss_reduction="max"), "ctc_loss_reduction"),
        (dict(mask_feature_prob=1.5), "mask_feature_prob"),
        (dict(vocab_size=0), "vocab_size"),
    ],
)
def test_bad_ctc_config_fields_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        Wav2Vec2Config.preset("tiny", **overrides)


def test_labels_outside_the_vocabulary_are_a_clear_error():
    model = Wav2Vec2ForCTC(Wav2Vec2Config.preset("tiny", vocab_size=VOCAB))
    with pytest.raises(ValueError, match="labels must be in"):
        model(_batch(False)[0], labels=np.array([[1, VOCAB], [2, -100]]))


def test_masked_group_norm_logits_on_a_padded_batch_are_each_utterance_alone():
    config = Wav2Vec2Config.preset("tiny", vocab_size=VOCAB)
    model = Wav2Vec2ForCTC(config, rngs=nnx.Rngs(0))
    lengths = np.array([16000, 1000, 6123])  # 16x apart: the padded statistics move every frame
    rng = np.random.default_rng(1)
    waveforms = np.zeros((3, lengths.max()), np.float32)
    for row, n in zip(waveforms, lengths):
        row[:n] = rng.standard_normal(n)
    attention_mask = (np.arange(lengths.max())[None, :] < lengths[:, None]).astype(np.int32)
    forward = nnx.jit(lambda m, x, a, g: m(x, a, group_norm=g), static_argnums=3)
    masked = forward(model, jnp.asarray(waveforms), jnp.asarray(attention_mask), "masked")
    padded = forward(model, jnp.asarray(waveforms), jnp.asarray(attention_mask), "padded")
    np.testing.assert_array_equal(masked.logit_lengths, model.num_frames(lengths))
    logits_alone = nnx.jit(lambda m, x: m(x).logits[0])
    for b, n in enumerate(lengths):
        alone = logits_alone(model, jnp.asarray(waveforms[b : b + 1, :n]))
        # float32 at different batch shapes (tests/test_representations.py's ATOL).
        np.testing.assert_allclose(masked.logits[b, : len(alone)], alone, atol=1e-5)
    # The default keeps the reference's statistics over the padding: the short rows move.
    short = model.num_frames(lengths[1])
    alone = logits_alone(model, jnp.asarray(waveforms[1:2, : lengths[1]]))
    assert np.abs(np.asarray(padded.logits[1, :short]) - np.asarray(alone)).max() > 1e-2
    with pytest.raises(ValueError, match="group_norm must be one of"):
        model(jnp.asarray(waveforms), jnp.asarray(attention_mask), group_norm="exact")
