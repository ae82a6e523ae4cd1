"""w2v_jax.research.torch_twin: the PyTorch twin set up like our training (weights, noise, optimizer)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from w2v_jax import optim
from w2v_jax import train_step as train_lib
from w2v_jax.research import torch_twin
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.contrastive_loss import sample_negative_indices
from w2v_jax.masking import compute_mask_indices
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.quantization import GumbelVectorQuantizer, gumbel_noise


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
    ours = model(x, mask_time_indices=mask, sampled_negative_indices=jnp.asarray(flat))
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
        train_lib.StepHyperparams(learning_rate=lambda s: 1e-3, gumbel_decay=0.99),
    )
    for step in (0, 7, 1000):
        expected = max(2.0 * 0.99**step, 0.5)
        assert trainer.temperature(step) == pytest.approx(expected, rel=1e-6)
