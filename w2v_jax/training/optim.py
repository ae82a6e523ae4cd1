"""Optimizer and schedules for wav2vec 2.0 pretraining and CTC fine-tuning.

fairseq's pretraining recipe (`examples/wav2vec/config/pretraining/wav2vec2_base_librispeech.yaml`):
Adam(0.9, 0.98), eps 1e-6, decoupled weight decay 0.01, gradient clipping, and a
`polynomial_decay` schedule (linear warmup from 0 to the peak, then decay with power 1 to 0 at the
last update). Here that is `optax.adamw` behind `optax.clip_by_global_norm`, wrapped in
`optax.inject_hyperparams` so the train step sets the learning rate from its own step counter:
the schedule is a function of the step inside the step, and a skipped (non-finite) update doesn't
shift it.

Fine-tuning (fairseq's `examples/wav2vec/config/finetuning/*.yaml`) uses Adam(0.9, 0.98), eps 1e-8,
no weight decay, and the `tri_stage` schedule (`tri_stage_schedule`): linear warm-up from 1% of the
peak, hold at the peak, exponential decay to `final_lr_scale` of the peak, in phases of 10%, 40% and
50% of the updates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax.numpy as jnp
import optax

ScheduleKind = Literal["polynomial", "linear", "cosine", "constant"]


def _check_peak_and_length(peak_value: float, total_steps: int) -> None:
    """The checks every schedule makes of its peak and its length."""
    if peak_value <= 0:
        raise ValueError(f"peak learning rate must be positive, got {peak_value}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")


def learning_rate_schedule(
    peak_value: float,
    total_steps: int,
    warmup_steps: int,
    kind: ScheduleKind = "polynomial",
    end_value: float = 0.0,
    power: float = 1.0,
) -> optax.Schedule:
    """Linear warmup from 0 to `peak_value`, then decay to `end_value` at `total_steps`.

    Args:
      peak_value: the learning rate at the end of the warmup.
      total_steps: number of updates of the run; the decay ends there.
      warmup_steps: number of warmup updates (fairseq's `warmup_updates`); a run shorter than
        that only warms up.
      kind: "polynomial" (fairseq's `polynomial_decay`, `(1 - t)**power`), "linear" (power 1),
        "cosine" or "constant" (warmup then flat).
      end_value: the learning rate reached at `total_steps`.
      power: exponent of the polynomial decay.

    Returns:
      an optax schedule `step -> learning rate`, jnp-friendly (usable inside jit).
    """
    _check_peak_and_length(peak_value, total_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if kind not in ("polynomial", "linear", "cosine", "constant"):
        raise ValueError(f"unknown schedule kind {kind!r}: expected polynomial, linear, cosine or constant")
    warmup = optax.linear_schedule(0.0, peak_value, warmup_steps)
    decay_steps = max(total_steps - warmup_steps, 1)
    if kind == "constant":
        decay = optax.constant_schedule(peak_value)
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(peak_value, decay_steps, alpha=end_value / peak_value)
    else:
        decay = optax.polynomial_schedule(
            peak_value, end_value, power=1.0 if kind == "linear" else power, transition_steps=decay_steps
        )
    return optax.join_schedules([warmup, decay], [warmup_steps])


def tri_stage_schedule(
    peak_value: float,
    total_steps: int,
    phase_ratios: Sequence[float] = (0.1, 0.4, 0.5),
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
) -> optax.Schedule:
    """fairseq's `tri_stage` learning-rate schedule (wav2vec 2.0 fine-tuning, paper appendix B).

    With `w, h, d = phase_ratios * total_steps` (rounded down): linear from
    `init_lr_scale * peak` to `peak` over the first `w` updates, `peak` for `h` updates, then
    `peak * exp(-ln(1 / final_lr_scale) * t / d)` for `t` in `[0, d)`, and `final_lr_scale * peak` after.

    Args:
      peak_value: the peak learning rate.
      total_steps: the run's updates.
      phase_ratios: fractions of `total_steps` for warm-up, hold and decay (summing to at most 1).
      init_lr_scale, final_lr_scale: start and end as fractions of the peak.

    Returns:
      an optax schedule `step -> learning rate`, jnp-friendly (usable inside jit).
    """
    _check_peak_and_length(peak_value, total_steps)
    if len(phase_ratios) != 3 or min(phase_ratios) < 0 or sum(phase_ratios) > 1 + 1e-9:
        raise ValueError(f"phase_ratios must be 3 non-negative fractions summing to at most 1, got {phase_ratios}")
    if not (0 < init_lr_scale <= 1 and 0 < final_lr_scale <= 1):
        raise ValueError(f"init_lr_scale and final_lr_scale must be in (0, 1], got {init_lr_scale}, {final_lr_scale}")
    warmup, hold, decay = (int(r * total_steps) for r in phase_ratios)
    init_value = init_lr_scale * peak_value
    decay_rate = -math.log(final_lr_scale) / max(decay, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warming = init_value + (peak_value - init_value) * step / max(warmup, 1)
        decaying = peak_value * jnp.exp(-decay_rate * (step - warmup - hold))
        return jnp.where(
            step < warmup,
            warming,
            jnp.where(
                step < warmup + hold,
                peak_value,
                jnp.where(step < warmup + hold + decay, decaying, final_lr_scale * peak_value),
            ),
        )

    return schedule


def schedule_from_train_config(train: Any) -> optax.Schedule:
    """The learning-rate schedule of a run config's `train` section: `tri_stage_schedule` when
    `lr_schedule == "tri_stage"` (fine-tuning), else `learning_rate_schedule`."""
    if train.lr_schedule == "tri_stage":
        return tri_stage_schedule(
            train.learning_rate, train.num_steps, tuple(train.phase_ratios), train.init_lr_scale, train.final_lr_scale
        )
    return learning_rate_schedule(
        train.learning_rate, train.num_steps, train.warmup_steps, train.lr_schedule, train.lr_end, train.lr_power
    )


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """`make_optimizer`'s arguments: the one mapping from a run config to the optimizer.

    Our train step and the PyTorch twin (`research.torch_twin`) both build their optimizer from it.
    """

    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.01
    max_grad_norm: float | None = 10.0

    @classmethod
    def from_train_config(cls, train: Any) -> OptimizerSettings:
        """The settings of a pretrain config's `train` section (w2v_jax/configs/pretrain.py)."""
        return cls(train.adam_b1, train.adam_b2, train.adam_eps, train.weight_decay, train.max_grad_norm)


def optimizer_from_train_config(train: Any) -> optax.GradientTransformationExtraArgs:
    """The optimizer of a run config's `train` section: `make_optimizer` with `OptimizerSettings.from_train_config`."""
    return make_optimizer(**dataclasses.asdict(OptimizerSettings.from_train_config(train)))


def make_optimizer(
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 10.0,
) -> optax.GradientTransformationExtraArgs:
    """Global-norm clipping then AdamW, with the learning rate as an injected hyperparameter.

    The returned state has `hyperparams["learning_rate"]`; the caller sets it every step
    (see `set_learning_rate`). Weight decay is decoupled and applies to every parameter, as
    fairseq's Adam does.

    Args:
      b1, b2, eps: Adam's moment decay rates and denominator epsilon (fairseq: 0.9, 0.98, 1e-6).
      weight_decay: decoupled weight decay coefficient (multiplied by the learning rate).
      max_grad_norm: clip the gradient's global norm to this; None or <= 0 disables clipping.

    Returns:
      an optax gradient transformation.
    """
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"Adam betas must be in [0, 1), got b1={b1}, b2={b2}")
    if eps <= 0:
        raise ValueError(f"Adam eps must be positive, got {eps}")
    adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    clip = optax.identity() if max_grad_norm is None or max_grad_norm <= 0 else optax.clip_by_global_norm(max_grad_norm)
    # Always a two-element chain, so `set_learning_rate` knows where the AdamW state is.
    return optax.chain(clip, adamw)


def set_learning_rate(opt_state: tuple, learning_rate: jnp.ndarray) -> tuple:
    """Returns `make_optimizer`'s state with AdamW's injected learning rate replaced (pure)."""
    clip_state, adamw_state = opt_state
    hyperparams = dict(adamw_state.hyperparams, learning_rate=jnp.asarray(learning_rate, jnp.float32))
    return (clip_state, adamw_state._replace(hyperparams=hyperparams))
