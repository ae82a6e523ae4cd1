"""Tests of w2v_jax/optim.py: schedules and AdamW against NumPy oracles."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2v_jax.configs import pretrain
from w2v_jax.training import optim


def schedule_oracle(step, peak, total, warmup, end=0.0, power=1.0):
    """fairseq's polynomial_decay with linear warmup, in NumPy."""
    step = np.asarray(step, np.float64)
    warm = peak * step / max(warmup, 1)
    frac = np.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    decay = (peak - end) * (1.0 - frac) ** power + end
    return np.where(step < warmup, warm, decay)


@pytest.mark.parametrize("kind,power", [("polynomial", 2.0), ("polynomial", 1.0), ("linear", 1.0)])
def test_schedule_matches_oracle(kind, power):
    schedule = optim.learning_rate_schedule(5e-4, 1000, 100, kind=kind, end_value=1e-5, power=power)
    steps = jnp.arange(0, 1101)
    got = jax.jit(jax.vmap(schedule))(steps)
    want = schedule_oracle(np.arange(0, 1101), 5e-4, 1000, 100, 1e-5, power)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)


def test_cosine_and_constant_schedules():
    cosine = optim.learning_rate_schedule(1.0, 110, 10, kind="cosine")
    constant = optim.learning_rate_schedule(1.0, 110, 10, kind="constant")
    steps = np.arange(10, 111)
    want = 0.5 * (1 + np.cos(np.pi * (steps - 10) / 100))
    np.testing.assert_allclose(jax.vmap(cosine)(jnp.asarray(steps)), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.vmap(constant)(jnp.asarray(steps)), np.ones(steps.shape), rtol=1e-6)


MAX_TOTAL = 10_000


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(total=st.integers(2, MAX_TOTAL), warmup_fraction=st.floats(0.0, 1.0), peak=st.floats(1e-6, 1.0))
def test_schedule_laws(total, warmup_fraction, peak):
    """Within [0, peak]; rises during the warmup, never rises after it."""
    warmup = int(warmup_fraction * total)
    schedule = optim.learning_rate_schedule(peak, total, warmup)
    # Evaluated on one fixed range (up to the largest `total`), so every example reuses the same programs.
    values = np.asarray(jax.vmap(schedule)(jnp.arange(MAX_TOTAL + 1)))[: total + 1]
    assert np.all(values >= 0) and np.all(values <= peak * (1 + 1e-6))
    assert np.all(np.diff(values[: warmup + 1]) >= 0)
    assert np.all(np.diff(values[warmup:]) <= peak * 1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(peak_value=0.0, total_steps=10, warmup_steps=1), "peak"),
        (dict(peak_value=1.0, total_steps=0, warmup_steps=0), "total_steps"),
        (dict(peak_value=1.0, total_steps=10, warmup_steps=-1), "warmup_steps"),
        (dict(peak_value=1.0, total_steps=10, warmup_steps=1, kind="step"), "kind"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.learning_rate_schedule(**kwargs)


def adamw_oracle(params, grads_seq, lrs, b1, b2, eps, wd, max_norm):
    """Clip-by-global-norm then decoupled-weight-decay Adam (fairseq's Adam), in NumPy float64."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
        scale = min(1.0, max_norm / norm)
        for k in p:
            g = grads[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1**t)
            v_hat = v[k] / (1 - b2**t)
            p[k] = p[k] - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * p[k])
    return p


def test_adamw_matches_oracle_with_per_step_learning_rate():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
    grads_seq = [{k: rng.normal(size=x.shape).astype(np.float32) * 5 for k, x in params.items()} for _ in range(5)]
    lrs = [1e-3, 2e-3, 3e-3, 2e-3, 1e-3]
    optimizer = optim.make_optimizer(0.9, 0.98, 1e-6, 0.01, max_grad_norm=1.0)

    @jax.jit
    def update(p, s, g, lr):
        s = optim.set_learning_rate(s, lr)
        updates, s = optimizer.update(g, s, p)
        return jax.tree.map(jnp.add, p, updates), s

    p = jax.tree.map(jnp.asarray, params)
    s = optimizer.init(p)
    for g, lr in zip(grads_seq, lrs):
        p, s = update(p, s, g, lr)
        np.testing.assert_allclose(s[1].hyperparams["learning_rate"], lr, rtol=1e-6)  # AdamW holds the lr set
    want = adamw_oracle(params, grads_seq, lrs, 0.9, 0.98, 1e-6, 0.01, 1.0)
    for k in params:
        np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)


def test_clipping_scales_the_gradient_adam_sees():
    """Adam's first moment after one step is (1 - b1) * g, with g clipped to norm 1 or not at all."""
    params = {"w": jnp.ones((2,))}
    grads = {"w": jnp.full((2,), 1e3)}  # norm 1e3 * sqrt(2)
    for max_norm, want in ((None, 0.1 * 1e3), (0.0, 0.1 * 1e3), (1.0, 0.1 / np.sqrt(2))):
        optimizer = optim.make_optimizer(max_grad_norm=max_norm)
        _, state = optimizer.update(grads, optim.set_learning_rate(optimizer.init(params), 1.0), params)
        adam_state = state[1].inner_state[0]
        np.testing.assert_allclose(adam_state.mu["w"], np.full(2, want), rtol=1e-6)


def test_optimizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="betas"):
        optim.make_optimizer(b1=1.0)
    with pytest.raises(ValueError, match="eps"):
        optim.make_optimizer(eps=0.0)


def test_optimizer_settings_come_from_the_train_section():

    train = pretrain.get_config("base").train
    train.unlock()
    train.update(adam_b1=0.8, adam_b2=0.95, adam_eps=1e-8, weight_decay=0.05, max_grad_norm=2.0)
    assert optim.OptimizerSettings.from_train_config(train) == optim.OptimizerSettings(0.8, 0.95, 1e-8, 0.05, 2.0)


def tri_stage_oracle(step, peak, total, ratios=(0.1, 0.4, 0.5), init_scale=0.01, final_scale=0.05):
    """fairseq's TriStageLRScheduler.step_update, in Python float64 (one step at a time)."""
    warmup, hold, decay = (int(r * total) for r in ratios)
    init_lr, final_lr = init_scale * peak, final_scale * peak
    if step < warmup:
        return init_lr + (peak - init_lr) / warmup * step
    if step < warmup + hold:
        return peak
    if step < warmup + hold + decay:
        return peak * np.exp(np.log(final_scale) / decay * (step - warmup - hold))
    return final_lr


@pytest.mark.parametrize("total,ratios", [(13_000, (0.1, 0.4, 0.5)), (97, (0.2, 0.3, 0.4))])
def test_tri_stage_schedule_matches_fairseq(total, ratios):
    schedule = optim.tri_stage_schedule(5e-5, total, ratios)
    steps = np.arange(0, total + 20)
    want = np.array([tri_stage_oracle(s, 5e-5, total, ratios) for s in steps])
    np.testing.assert_allclose(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)), want, rtol=2e-6)
    assert float(schedule(0)) == pytest.approx(5e-7) and float(schedule(total + 5)) == pytest.approx(2.5e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(phase_ratios=(0.5, 0.5, 0.5)), "phase_ratios"),
        (dict(phase_ratios=(0.5, 0.5)), "phase_ratios"),
        (dict(final_lr_scale=0.0), "final_lr_scale"),
    ],
)
def test_tri_stage_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.tri_stage_schedule(1.0, 100, **kwargs)
