"""The whole model against transformers' Wav2Vec2ForPreTraining (PyTorch, CPU, float32).

Random-init reference models of several configurations are saved with `save_pretrained`, loaded
with `w2v_jax.checkpoints.hf.load_hf_checkpoint`, and both frameworks get the same waveforms, attention
masks, masks and distractors. In eval mode every output field and the gradient of the loss with
respect to every parameter must agree within `RTOL` relative (max abs difference / max abs value of
the reference field). `pytest tests/test_model_parity.py -s` prints the measured errors.
"""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from tests.support.parity import CONFIGS, reference_checkpoint, relative_error
from w2v_jax.checkpoints.hf import load_hf_checkpoint, params_to_hf
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2Model

# Measured (float32, highest matmul precision): outputs <= 1.6e-6, gradients <= 3.6e-6 (the conv
# stack's, whose reductions are longest); the bounds are ~3x those.
RTOL = {"outputs": 5e-6, "gradients": 1.1e-5}
FIELDS = (
    "loss",
    "contrastive_loss",
    "diversity_loss",
    "projected_states",
    "projected_quantized_states",
    "codevector_perplexity",
)
SAMPLES = 8000  # half a second: 24 frames
LENGTHS = np.array([SAMPLES, 5600])  # the second utterance padded (17 real frames)


def _inputs(config: Wav2Vec2Config, model, padded: bool, seed: int = 0):
    num_frames = model.num_frames(SAMPLES)
    rng = np.random.default_rng(seed)
    waveforms = rng.standard_normal((2, SAMPLES)).astype(np.float32)
    attention_mask = None
    frame_mask = None
    if padded:
        attention_mask = (np.arange(SAMPLES)[None, :] < LENGTHS[:, None]).astype(np.int64)
        waveforms = (waveforms * attention_mask).astype(np.float32)  # zero padding, as feature extractors do
        frame_lengths = [model.num_frames(int(n)) for n in LENGTHS]
        frame_mask = torch.tensor(np.arange(num_frames)[None, :] < np.array(frame_lengths)[:, None])
    np.random.seed(seed)
    mask = _compute_mask_indices(
        (2, num_frames), config.mask_time_prob, config.mask_time_length, frame_mask, config.mask_time_min_masks
    )
    negatives = _sample_negative_indices((2, num_frames), config.num_negatives, mask)
    return waveforms, attention_mask, mask, negatives


def _codes(reference, waveforms, attention_mask) -> np.ndarray:
    """The reference's eval-mode codeword choices, `[batch, time, G]`."""
    with torch.no_grad():
        features = reference.wav2vec2(
            torch.tensor(waveforms), None if attention_mask is None else torch.tensor(attention_mask)
        ).extract_features
        logits = reference.quantizer.weight_proj(features)
    batch, time, _ = logits.shape
    return logits.view(batch, time, reference.config.num_codevector_groups, -1).argmax(-1).numpy()


def _without_same_code_distractors(negatives, mask, codes, seed=0):
    """Redraws the distractors whose codewords equal their target's.

    Both frameworks give such a distractor a -inf logit when its projected vector equals the
    target's bit for bit. Ours always finds them equal (identical codes give identical rows);
    torch's CPU matmul sometimes yields rows 1 ulp apart for identical inputs, and then the
    reference keeps the logit. That float artifact is kept out of the comparison.
    """
    rng = np.random.default_rng(seed)
    negatives = negatives.copy()
    batch, time, _ = negatives.shape
    for b in range(batch):
        candidates = np.flatnonzero(mask[b])
        for t in candidates:
            for k, flat in enumerate(negatives[b, t]):
                if np.array_equal(codes[b, flat - b * time], codes[b, t]):
                    different = [j for j in candidates if not np.array_equal(codes[b, j], codes[b, t])]
                    negatives[b, t, k] = b * time + rng.choice(different)
    return negatives


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_outputs_and_gradients_match_transformers(name, tmp_path):
    config = CONFIGS[name]
    reference = reference_checkpoint(config, tmp_path)
    loaded_config, model = load_hf_checkpoint(tmp_path)
    assert loaded_config == config
    padded = name != "group_post_ln"  # one configuration without an attention mask
    waveforms, attention_mask, mask, negatives = _inputs(config, model, padded)
    negatives = _without_same_code_distractors(negatives, mask, _codes(reference, waveforms, attention_mask))

    out_ref = reference(
        torch.tensor(waveforms),
        attention_mask=None if attention_mask is None else torch.tensor(attention_mask),
        mask_time_indices=torch.tensor(mask),
        sampled_negative_indices=torch.tensor(negatives, dtype=torch.long),
    )
    out_ref.loss.backward()
    # None: no gradient path (the argmax quantizer's logits).
    grads_ref = {k: np.zeros(p.shape) if p.grad is None else p.grad.numpy() for k, p in reference.named_parameters()}

    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, waveforms, attention_mask, mask, negatives):
        out = nnx.merge(graphdef, params)(
            waveforms, attention_mask, mask_time_indices=mask, sampled_negative_indices=negatives
        )
        return out.loss, out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        params, waveforms, attention_mask, mask, negatives
    )
    grads = params_to_hf(grads, config)

    errors = {f: relative_error(getattr(out, f), getattr(out_ref, f).detach().numpy()) for f in FIELDS}
    assert set(grads) == set(grads_ref)
    # A key bias shifts all logits of a query equally: softmax ignores it, its exact gradient is 0
    # and both frameworks return rounding noise. It must be noise-sized, not compared.
    key_biases = [k for k in grads_ref if k.endswith("attention.k_proj.bias")]
    for k in key_biases:
        scale = np.abs(grads_ref[k.replace(".bias", ".weight")]).max()
        assert np.abs(grads[k]).max() < 1e-4 * scale and np.abs(grads_ref[k]).max() < 1e-4 * scale
    grad_errors = {
        k: relative_error(grads[k], grads_ref[k]) for k in grads_ref if np.any(grads_ref[k]) and k not in key_biases
    }
    worst_grad = max(grad_errors, key=grad_errors.get)
    print(
        f"\n{name}: max relative error over output fields {max(errors.values()):.2e} "
        f"({max(errors, key=errors.get)}), over parameter gradients {grad_errors[worst_grad]:.2e} ({worst_grad})"
    )
    assert max(errors.values()) < RTOL["outputs"], errors
    assert grad_errors[worst_grad] < RTOL["gradients"], {k: v for k, v in grad_errors.items() if v >= RTOL["gradients"]}
    # The argmax quantizer has no gradient into its logits in either framework.
    for key in ("quantizer.weight_proj.weight", "quantizer.weight_proj.bias"):
        assert not np.any(grads[key]) and not np.any(grads_ref[key])
    assert int(out.num_masked) == int(mask.sum())


# Wav2Vec2Model: BASE's layout (group norm, post-LN) and LARGE's (layer norm, pre-LN), both padded.
ENCODER_CONFIGS = ("group_post_ln", "layer_pre_ln_odd")
# Relative errors measured (float32, CPU): at most 1.6e-6 over the outputs and hidden states,
# 3.3e-6 over the parameter gradients (the deepest conv's weight); the bounds leave ~3x.
ENCODER_RTOL = {"outputs": 5e-6, "gradients": 1e-5}


@pytest.mark.slow
@pytest.mark.parametrize("name", ENCODER_CONFIGS)
def test_encoder_outputs_hidden_states_and_gradients_match_transformers(name, tmp_path):
    """Our Wav2Vec2Model against transformers' (eval mode, padded batch, explicit time mask).

    The scalar differentiated is a fixed random projection of every output (last_hidden_state,
    extract_features, each hidden state), so every parameter's gradient is compared.
    """
    config = CONFIGS[name]
    reference = reference_checkpoint(config, tmp_path, transformers.Wav2Vec2Model)
    _, model = load_hf_checkpoint(tmp_path)
    assert isinstance(model, Wav2Vec2Model)
    waveforms, attention_mask, mask, _ = _inputs(config, model, padded=True)

    out_ref = reference(
        torch.tensor(waveforms),
        attention_mask=torch.tensor(attention_mask),
        mask_time_indices=torch.tensor(mask),
        output_hidden_states=True,
    )
    assert len(out_ref.hidden_states) == config.num_hidden_layers + 1
    layers = range(len(out_ref.hidden_states))
    names = ["last_hidden_state", "extract_features", *(f"hidden_states.{i}" for i in layers)]
    reference_outputs = [out_ref.last_hidden_state, out_ref.extract_features, *out_ref.hidden_states]
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in reference_outputs]
    sum(torch.sum(o * torch.tensor(w)) for o, w in zip(reference_outputs, weights)).backward()
    grads_ref = {k: p.grad.numpy() for k, p in reference.named_parameters() if p.grad is not None}

    graphdef, params = nnx.split(model, nnx.Param)

    def projection(params):
        out = nnx.merge(graphdef, params)(waveforms, attention_mask, mask, output_hidden_states=True)
        outputs = [out.last_hidden_state, out.extract_features, *out.hidden_states]
        return sum(jax.numpy.sum(o * w) for o, w in zip(outputs, weights)), outputs

    (_, outputs), grads = jax.jit(jax.value_and_grad(projection, has_aux=True))(params)
    grads = params_to_hf(grads, config)

    errors = {n: relative_error(o, r.detach().numpy()) for n, o, r in zip(names, outputs, reference_outputs)}
    assert set(grads) == set(grads_ref) == {k for k, _ in reference.named_parameters()}
    key_biases = [k for k in grads_ref if k.endswith("attention.k_proj.bias")]  # exact gradient 0, see above
    grad_errors = {k: relative_error(grads[k], grads_ref[k]) for k in grads_ref if k not in key_biases}
    worst_grad = max(grad_errors, key=grad_errors.get)
    print(
        f"\n{name} encoder: max relative error over outputs {max(errors.values()):.2e} "
        f"({max(errors, key=errors.get)}), over parameter gradients {grad_errors[worst_grad]:.2e} ({worst_grad})"
    )
    assert max(errors.values()) < ENCODER_RTOL["outputs"], errors
    assert grad_errors[worst_grad] < ENCODER_RTOL["gradients"], {
        k: v for k, v in grad_errors.items() if v >= ENCODER_RTOL["gradients"]
    }
    assert np.any(grads["masked_spec_embed"])  # the mask reached the encoder
