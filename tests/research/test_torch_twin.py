"""w2v_jax.research.torch_twin: the PyTorch twin set up like our training (weights, noise, optimizer),
for pretraining and CTC fine-tuning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

from w2v_jax import sharding
from w2v_jax.asr.objective import CTCObjective
from w2v_jax.checkpoints.hf import params_to_hf
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.contrastive_loss import sample_negative_indices
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.masking import compute_mask_indices
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining
from w2v_jax.pretraining.objective import PretrainingObjective
from w2v_jax.quantization import GumbelVectorQuantizer, gumbel_noise
from w2v_jax.research import torch_twin
from w2v_jax.training import optim, train_step
from w2v_jax.training_draws import sample_training_masks


@pytest.fixture(scope="module")
def config():
    return torch_twin.comparable_config(Wav2Vec2Config.preset("tiny"))


def test_comparable_config_turns_off_what_torch_cannot_share(config):
    assert config.hidden_dropout == config.attention_dropout == config.layerdrop == 0.0
    assert config.feature_penalty_weight == 0.0 and config.feature_grad_mult == 1.0
    # What both frameworks compute identically is left alone.
    tiny = Wav2Vec2Config.preset("tiny")
    assert (config.num_codevector_groups, config.mask_time_prob) == (tiny.num_codevector_groups, tiny.mask_time_prob)
    torch_twin.check_comparable(config)
    # A frozen feature encoder (fine-tuning's feature_grad_mult = 0) is transformers' freeze_feature_encoder.
    frozen = torch_twin.comparable_config(tiny.replace(feature_grad_mult=0.0, final_dropout=0.1))
    assert frozen.feature_grad_mult == 0.0 and frozen.final_dropout == 0.0
    torch_twin.check_comparable(frozen)


@pytest.mark.parametrize(
    "field, value",
    [("hidden_dropout", 0.1), ("layerdrop", 0.05), ("feature_penalty_weight", 10.0), ("feature_grad_mult", 0.1)],
)
def test_check_comparable_names_the_field(config, field, value):
    with pytest.raises(ValueError, match=field):
        torch_twin.check_comparable(config.replace(**{field: value}))


def test_flat_negative_indices_matches_loop():
    indices = np.random.RandomState(0).randint(0, 7, size=(3, 7, 4))
    expected = indices.copy()
    for b in range(3):
        expected[b] += b * 7
    np.testing.assert_array_equal(torch_twin.flat_negative_indices(indices), expected)
    with pytest.raises(ValueError, match=r"\[batch, time, K\]"):
        torch_twin.flat_negative_indices(indices[0])


def test_supplied_noise_gives_torch_our_quantizer_sample():
    """The reference's gumbel_softmax with our noise picks our codewords, one-hot exactly, with the
    soft sample's gradient (straight-through)."""
    groups, num_vars, tau = 2, 8, 0.7
    quantizer = GumbelVectorQuantizer(6, num_groups=groups, num_vars=num_vars, codevector_dim=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 6))
    key = jax.random.key(2)
    _, usage = quantizer(x, temperature=tau, key=key, deterministic=False)
    noise = np.asarray(gumbel_noise(key, (2, 5, groups, num_vars)))
    logits = np.asarray(quantizer.weight_proj(x)).reshape(-1, num_vars)

    torch_logits = torch.tensor(logits, requires_grad=True)
    with torch_twin.supplied_gumbel_noise(noise):
        sample = torch.nn.functional.gumbel_softmax(torch_logits, tau=tau, hard=True)
    np.testing.assert_array_equal(sample.argmax(-1).numpy().reshape(2, 5, groups), np.asarray(usage.indices))
    assert set(np.unique(sample.detach().numpy())) <= {0.0, 1.0}
    weights = torch.arange(num_vars, dtype=torch.float32)
    (sample * weights).sum().backward()
    gumbels = noise.reshape(-1, num_vars)
    weighted_soft = lambda z: jnp.sum(jax.nn.softmax((z + gumbels) / tau) * np.arange(num_vars))  # noqa: E731
    expected = jax.grad(weighted_soft)(jnp.asarray(logits))
    np.testing.assert_allclose(torch_logits.grad.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_supplied_noise_is_scoped():
    original = torch.nn.functional.gumbel_softmax
    with torch_twin.supplied_gumbel_noise(np.zeros((1, 1, 1, 4), np.float32)):
        assert torch.nn.functional.gumbel_softmax is not original
    assert torch.nn.functional.gumbel_softmax is original


def test_reference_model_holds_our_weights(config):
    """Eval-mode forward of the converted reference equals ours (1e-4 relative, CONTRACT)."""
    model = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0))
    torch_model = torch_twin.build_reference_model(config, nnx.state(model, nnx.Param)).eval()
    x = np.random.RandomState(0).randn(2, 8000).astype(np.float32)
    frames = model.num_frames(8000)
    mask = compute_mask_indices(jax.random.key(3), (2, frames), 0.65, 4, 2)
    negatives = np.asarray(sample_negative_indices(jax.random.key(4), mask, config.num_negatives))
    flat = torch_twin.flat_negative_indices(negatives)
    forward = nnx.jit(lambda m, x, masks, negatives: m(x, mask_time_indices=masks, sampled_negative_indices=negatives))
    ours = forward(model, x, mask, jnp.asarray(flat))
    with torch.no_grad():
        theirs = torch_model(
            torch.tensor(x),
            mask_time_indices=torch.tensor(np.asarray(mask)),
            sampled_negative_indices=torch.tensor(flat),
        )
    np.testing.assert_allclose(float(ours.loss), theirs.loss.item(), rtol=1e-4)
    np.testing.assert_allclose(ours.projected_states, theirs.projected_states.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("max_grad_norm", [10.0, 0.05, None])
def test_reference_optimizer_matches_optax(max_grad_norm):
    """Three updates of clipping + AdamW + schedule: torch's parameters follow optax's (float32)."""
    rng = np.random.RandomState(0)
    init = {"w": rng.randn(4, 3).astype(np.float32), "b": rng.randn(3).astype(np.float32)}
    grads = [{"w": rng.randn(4, 3).astype(np.float32), "b": rng.randn(3).astype(np.float32)} for _ in range(3)]
    grads[1]["b"] = None  # a parameter without gradient this step: optax sees zeros and still decays it
    schedule = optim.learning_rate_schedule(1e-2, 3, 1)

    tx = optim.make_optimizer(max_grad_norm=max_grad_norm)
    params = {k: jnp.asarray(v) for k, v in init.items()}
    state = tx.init(params)
    for step, g in enumerate(grads):
        g = {k: jnp.zeros_like(params[k]) if v is None else jnp.asarray(v) for k, v in g.items()}
        state = optim.set_learning_rate(state, schedule(step))
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)

    torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    opt = torch_twin.ReferenceOptimizer(
        list(torch_params.values()), optim.OptimizerSettings(max_grad_norm=max_grad_norm), schedule
    )
    for step, g in enumerate(grads):
        for k, p in torch_params.items():
            p.grad = None if g[k] is None else torch.tensor(g[k])
        opt.step(step)
    for k in init:
        np.testing.assert_allclose(torch_params[k].detach().numpy(), params[k], rtol=1e-5, atol=1e-7)


def test_temperature_is_our_float32_schedule(config):
    model = Wav2Vec2ForPreTraining(config, rngs=nnx.Rngs(0))
    trainer = torch_twin.ReferenceTrainer(
        config,
        nnx.state(model, nnx.Param),
        optim.OptimizerSettings(),
        train_step.StepHyperparams(learning_rate=lambda s: 1e-3, objective=PretrainingObjective(gumbel_decay=0.99)),
    )
    for step in (0, 7, 1000):
        expected = max(2.0 * 0.99**step, 0.5)
        assert trainer.temperature(step) == pytest.approx(expected, rel=1e-6)


# CTC fine-tuning: a layer-norm model (LARGE's layout: attention mask, padded batch), masks in time
# and channels, the feature encoder frozen, the Transformer frozen for the first update. (The
# group-norm layout without attention mask, BASE's, is the benchmark's tiny fine-tuning test.)
CTC_VOCABULARY = Vocabulary.from_symbols("abcdefgh")
CTC_CONFIG = torch_twin.comparable_config(
    Wav2Vec2Config.preset(
        "tiny",
        vocab_size=len(CTC_VOCABULARY),
        feature_grad_mult=0.0,
        mask_time_prob=0.3,
        mask_time_length=3,
        mask_feature_prob=0.3,
        mask_feature_length=4,
        ctc_zero_infinity=True,
        feat_extract_norm="layer",
        conv_bias=True,
        do_stable_layer_norm=True,
    )
)


def _ctc_batch(padded: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = np.array([8000, 5600 if padded else 8000])
    attention_mask = (np.arange(8000)[None, :] < lengths[:, None]).astype(np.int32)
    labels = np.array([[5, 6, 6, 7, 9, 12], [8, 5, 10, -100, -100, -100]], np.int32)
    waveforms = (rng.standard_normal((2, 8000)) * attention_mask).astype(np.float32)
    return {"input_values": waveforms, "attention_mask": attention_mask, "labels": labels}


def test_ctc_steps_match_our_train_step():
    """Three updates of the twin's CTC step and ours from the same weights on the same padded batch and
    masks: the same loss, gradient norm and learning rate at each, the same parameters frozen and updated."""
    config = CTC_CONFIG
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    settings = optim.OptimizerSettings(eps=1e-8, weight_decay=0.0, max_grad_norm=0.0)  # fairseq's fine-tuning
    objective = CTCObjective(freeze_finetune_updates=1, use_attention_mask=True)
    hparams = train_step.StepHyperparams(learning_rate=optim.tri_stage_schedule(1e-2, 10), objective=objective)
    optimizer = optim.make_optimizer(**dataclasses.asdict(settings))
    graphdef, state, shardings = train_step.create_train_state(
        config, optimizer, seed=0, mesh=mesh, model_class=Wav2Vec2ForCTC
    )
    step_fn = train_step.TrainStep(graphdef, optimizer, hparams, mesh, shardings)
    initial = params_to_hf(state.params, config)
    twin = torch_twin.ReferenceTrainer(config, jax.device_get(state.params), settings, hparams)
    batch = _ctc_batch(padded=True)
    num_frames = nnx.eval_shape(lambda: Wav2Vec2ForCTC(config)).num_frames
    frames, lengths = num_frames(8000), num_frames(batch["attention_mask"].sum(-1))
    key = jax.random.key(0)
    sample_masks = jax.jit(sample_training_masks, static_argnums=(1, 2, 3))
    for step in range(3):
        time_mask, feature_mask = sample_masks(train_step.model_key(key, step, 0), config, 2, frames, lengths)
        assert np.asarray(time_mask).any() and np.asarray(feature_mask).any()
        state, ours = step_fn(state, batch, key)
        theirs = twin.step_ctc(batch, np.asarray(time_mask), np.asarray(feature_mask))
        # float32 rounding of the same computation (tests/test_ctc_model.py). Worst relative errors
        # measured over five updates, padded or not, with 1, 2 and 4 torch threads and XLA on one or
        # several threads: 4.1e-7 (loss) and 4.3e-6 (gradient norm), 5.5e-6 on a slower CI machine.
        for name, rtol in (("loss", 2e-6), ("grad_norm", 2e-5)):
            np.testing.assert_allclose(float(ours[name]), theirs[name], rtol=rtol, err_msg=f"{name} at step {step}")
        assert float(ours["learning_rate"]) == pytest.approx(theirs["learning_rate"], rel=1e-6)
        assert (float(ours["num_utterances"]), float(ours["num_label_tokens"])) == (
            theirs["num_utterances"],
            theirs["num_label_tokens"],
        )
        ours_now = params_to_hf(state.params, config)
        theirs_now = {k: p.detach().numpy() for k, p in twin.model.named_parameters()}
        for name, value in initial.items():
            changed = {
                "ours": not np.array_equal(ours_now[name], value),
                "pytorch": not np.array_equal(theirs_now[name], value),
            }
            if name.startswith("lm_head"):
                expected = True
            elif name.startswith("wav2vec2.feature_extractor") or step == 0:
                expected = False  # feature_grad_mult = 0; the Transformer frozen for one update
            else:
                continue  # learns from step 1 (some parameters have exactly zero gradient)
            assert changed == {"ours": expected, "pytorch": expected}, (name, step)


def test_ctc_twin_refuses_what_it_cannot_reproduce():
    config = CTC_CONFIG
    params = nnx.state(Wav2Vec2ForCTC(config, rngs=nnx.Rngs(0)), nnx.Param)
    hparams = train_step.StepHyperparams(lambda step: 1e-3, objective=CTCObjective(use_attention_mask=False))
    twin = torch_twin.ReferenceTrainer(config, params, optim.OptimizerSettings(), hparams)
    with pytest.raises(ValueError, match="padded batch without the attention mask"):
        twin.step_ctc(_ctc_batch(padded=True))
    with pytest.raises(ValueError, match="call update_ctc"):
        twin.update(torch.zeros(2, 8000), torch.zeros(2, 24, dtype=torch.bool), torch.zeros(2, 24, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(2, 32\) channel mask, transformers asked for \(2, 24\)"):
        with torch_twin.supplied_feature_mask(np.zeros((2, 32), bool)):
            transformers.models.wav2vec2.modeling_wav2vec2._compute_mask_indices((2, 24), 0.5, 2)
