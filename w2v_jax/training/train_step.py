"""The train state and the pure, jit-compiled train step (pretraining, or any `Objective`).

`train_step(state, batch, key) -> (state, metrics)` is one update of fairseq's recipe:
1. the model's key is `fold_in(fold_in(key, state.step), micro-batch index)` (`model_key`); the
   model derives named sub-keys from it (masks, negatives, dropout, Gumbel),
   so the random draws depend on the step and the global batch, not on how many devices there are;
2. the Gumbel temperature and the learning rate are functions of `state.step`, computed inside;
3. the batch is split into `grad_accum_steps` micro-batches scanned in sequence; the model's losses
   are sums over masked frames, so gradients are summed and divided once by the total number of
   masked frames (fairseq's `sample_size`): the update doesn't depend on the split;
4. a non-finite loss or gradient leaves parameters and optimizer state untouched; the update is
   counted as skipped (`nonfinite_total`, `nonfinite_consecutive` live in the state, so they are
   checkpointed too).

What the step optimises is its `Objective` (`StepHyperparams.objective`): the model's summed loss
on a micro-batch, the sums and counts it adds up, the count that normalises the gradient and the
metrics. `pretraining.objective.PretrainingObjective` is wav2vec 2.0's (contrastive + diversity, per
masked frame); `asr.objective.CTCObjective` is CTC fine-tuning's. The loop, accumulation, non-finite
skip, sharding and donation are shared.

NNX is used functionally (Flax's performance guide): the model is split once into a static
graph definition and a state pytree; the step is a plain `jax.jit` over the pytree that merges
them back inside. `TrainStep` compiles it with explicit shardings (batch over the mesh,
parameters as `sharding.state_shardings` says) and donates the old state.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from w2v_jax import sharding
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.training import compute, optim

logger = logging.getLogger(__name__)

Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything an update changes; a pytree (checkpointed as is).

    Attributes:
      step: number of updates done so far (skipped ones included: each consumed a batch).
      params: the model's `nnx.Param`s (float32 master weights).
      model_state: the model's other variables (none today; kept so `nnx.merge` is complete).
      opt_state: optax state of `optim.make_optimizer`.
      nonfinite_total: updates skipped because the loss or a gradient wasn't finite.
      nonfinite_consecutive: skipped updates since the last applied one.
    """

    step: jax.Array
    params: nnx.State
    model_state: nnx.State
    opt_state: optax.OptState
    nonfinite_total: jax.Array
    nonfinite_consecutive: jax.Array


class Objective(Protocol):
    """What `train_step` optimises; a frozen dataclass (hashable: part of the static step settings).

    Attributes:
      sums: names of the float32 sums `loss` returns, added over micro-batches; one is `loss`, the
        summed loss (an update whose `loss` or gradient is not finite is skipped).
      counts: names of the int32 counts `loss` returns, added over micro-batches (exactly).
      normalizer: the count that divides the summed loss's gradient once per update (fairseq's
        sample size).
    """

    # Read-only (properties), as the frozen dataclasses that implement it hold them.
    @property
    def sums(self) -> tuple[str, ...]: ...

    @property
    def counts(self) -> tuple[str, ...]: ...

    @property
    def normalizer(self) -> str: ...

    def loss(
        self, model: nnx.Module, micro: Mapping[str, jax.Array], key: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
        """(summed loss to differentiate, float sums, int counts) of one micro-batch in training mode."""
        ...

    def frozen_gradients(self, grads: nnx.State, step: jax.Array) -> nnx.State:
        """The gradients with frozen parameters' zeroed (a function of the step)."""
        ...

    def metrics(
        self, sums: dict[str, jax.Array], counts: dict[str, jax.Array], accum: int, step: jax.Array
    ) -> dict[str, jax.Array]:
        """The update's float32 metrics from the summed sums and counts."""
        ...


@dataclasses.dataclass(frozen=True)
class StepHyperparams:
    """The static (hashable) settings of `train_step`.

    Attributes:
      learning_rate: the schedule, a function of the step.
      objective: what the step optimises (`pretraining.objective.PretrainingObjective`, `asr.objective.CTCObjective`).
      grad_accum_steps: micro-batches per update.
    """

    learning_rate: Callable[[jax.Array], jax.Array]
    objective: Objective
    grad_accum_steps: int = 1


class ModelClass(Protocol):
    """What the step needs of a task's model class: built as `cls(config, dtype=, remat=, rngs=)`, an
    `nnx.Module` (what it computes is its objective's business): `Wav2Vec2ForPreTraining`,
    `Wav2Vec2ForCTC`, or a third task's model."""

    def __call__(
        self, config: Wav2Vec2Config, *, dtype: jnp.dtype | None, remat: bool, rngs: nnx.Rngs
    ) -> nnx.Module: ...


def create_model(
    config: Wav2Vec2Config,
    seed: int,
    *,
    model_class: ModelClass,
    dtype: jnp.dtype | None = None,
    remat: bool = False,
) -> nnx.Module:
    """The task's model with float32 parameters (`dtype` is the computation dtype); `remat`
    recomputes the conv encoder's and each Transformer layer's activations in the backward pass."""
    return model_class(config, dtype=dtype, remat=remat, rngs=nnx.Rngs(seed))


def _initial_state(
    config: Wav2Vec2Config,
    optimizer: optax.GradientTransformation,
    seed: int,
    dtype: jnp.dtype | None,
    remat: bool,
    model_class: ModelClass,
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, step-0 state) of a freshly initialised model: a traceable function (the graphdef is a
    pytree without leaves, so `jax.eval_shape` returns it whole)."""
    model = create_model(config, seed, model_class=model_class, dtype=dtype, remat=remat)
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]  # flax types the states as variadic: two filters give two
    return graphdef, TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=optimizer.init(params),
        nonfinite_total=jnp.zeros((), jnp.int32),
        nonfinite_consecutive=jnp.zeros((), jnp.int32),
    )


def abstract_train_state(
    config: Wav2Vec2Config,
    optimizer: optax.GradientTransformation,
    *,
    model_class: ModelClass,
    mesh: Mesh,
    param_sharding: sharding.ParamSharding = "replicated",
    min_fsdp_size: int = 2**14,
    dtype: jnp.dtype | None = None,
    remat: bool = False,
) -> tuple[nnx.GraphDef, TrainState, Any]:
    """Shapes only, nothing computed: (graphdef, abstract state, state shardings)."""
    # One trace gives both: building the model is most of the cost (seconds for LARGE).
    graphdef, abstract = jax.eval_shape(lambda: _initial_state(config, optimizer, 0, dtype, remat, model_class))
    return graphdef, abstract, sharding.state_shardings(abstract, mesh, param_sharding, min_fsdp_size)


def create_train_state(
    config: Wav2Vec2Config,
    optimizer: optax.GradientTransformation,
    *,
    model_class: ModelClass,
    seed: int,
    mesh: Mesh,
    param_sharding: sharding.ParamSharding = "replicated",
    min_fsdp_size: int = 2**14,
    dtype: jnp.dtype | None = None,
    remat: bool = False,
) -> tuple[nnx.GraphDef, TrainState, Any]:
    """Initialises the model and optimizer directly in their shardings (no host copy of big weights).

    Args:
      config: the model config.
      optimizer: `optim.make_optimizer`'s transformation.
      model_class: the task's model (`Task.model_class`).
      seed: parameter initialisation seed.
      mesh: a `sharding.make_mesh` mesh.
      param_sharding: "replicated" or "fsdp".
      min_fsdp_size: under "fsdp", arrays with fewer elements stay replicated.
      dtype: computation dtype (parameters stay float32).
      remat: rematerialise Transformer layers.

    Returns:
      (graphdef, state, state_shardings): the static model structure for `train_step`, the
      initial state, and the `NamedSharding` pytree of the state.
    """
    graphdef, _, shardings = abstract_train_state(
        config,
        optimizer,
        mesh=mesh,
        param_sharding=param_sharding,
        min_fsdp_size=min_fsdp_size,
        dtype=dtype,
        remat=remat,
        model_class=model_class,
    )
    state = jax.jit(
        lambda: _initial_state(config, optimizer, seed, dtype, remat, model_class)[1], out_shardings=shardings
    )()
    return graphdef, state, shardings


def model_key(key: jax.Array, step: jax.Array | int, micro_index: jax.Array | int) -> jax.Array:
    """The key the model gets for micro-batch `micro_index` of update `step` (it derives the named
    sub-keys from it). Public so tools that replay a run (`research.compare`) draw the
    same masks, distractors and Gumbel noise as the step did, with `training_draws.sample_masks_and_negatives`
    and `training_draws.sample_gumbel_noise`."""
    return jax.random.fold_in(jax.random.fold_in(key, step), micro_index)


def _summed_gradients(
    state: TrainState, batch: Batch, key: jax.Array, graphdef: nnx.GraphDef, objective: Objective, accum: int
) -> tuple[nnx.State, dict[str, jax.Array], dict[str, jax.Array]]:
    """The gradient of the objective's summed loss, and its float sums and int counts, added up
    over `accum` micro-batches of `batch`."""

    def summed_loss(params: nnx.State, micro: dict[str, jax.Array], micro_key: jax.Array):
        model = nnx.merge(graphdef, params, state.model_state)
        loss, sums, counts = objective.loss(model, micro, micro_key, state.step)
        return loss, (
            {k: jnp.asarray(v, jnp.float32) for k, v in sums.items()},
            {k: jnp.asarray(v, jnp.int32) for k, v in counts.items()},
        )

    grad_fn = jax.grad(summed_loss, has_aux=True)
    if accum == 1:
        # No length-1 scan: inside XLA:CPU's while loop the convolutions' gradients lose their fast kernels.
        grads, (sums, counts) = grad_fn(state.params, dict(batch), model_key(key, state.step, 0))
        return grads, sums, counts

    def accumulate(carry, inputs):
        grads_sum, sums = carry
        index, micro = inputs
        grads, micro_sums = grad_fn(state.params, micro, model_key(key, state.step, index))
        return (jax.tree.map(jnp.add, grads_sum, grads), jax.tree.map(jnp.add, sums, micro_sums)), None

    # [batch, ...] -> [accum, batch / accum, ...]; row i goes to micro-batch i % accum, so each
    # device's rows stay on it (the leading batch dimension keeps its sharding).
    micro_batches = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), dict(batch)
    )
    zero_sums = (
        {k: jnp.zeros((), jnp.float32) for k in objective.sums},
        {k: jnp.zeros((), jnp.int32) for k in objective.counts},
    )
    zero_grads = jax.tree.map(jnp.zeros_like, state.params)
    (grads_sum, (sums, counts)), _ = jax.lax.scan(
        accumulate, (zero_grads, zero_sums), (jnp.arange(accum), micro_batches)
    )
    return grads_sum, sums, counts


def train_step(
    state: TrainState,
    batch: Batch,
    key: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    hparams: StepHyperparams,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update (see the module docstring).

    Args:
      state: the train state.
      batch: {"input_values": float32 [batch, samples], "attention_mask": int32 [batch, samples]} and
        what the objective reads: pretraining optionally "mask_time_indices" bool [batch, frames] and
        "negative_indices" int32 [batch, frames, K] (frame indices within each utterance, the model's
        `negative_indices`, not transformers' flattened `sampled_negative_indices`) to replace the
        sampled ones, as `research.compare` does to feed the PyTorch reference the same inputs;
        CTC fine-tuning "labels" int32 [batch, labels] padded with -100.
      key: the run's base PRNG key (typed); the step folds its counter in.
      graphdef: the model's static structure (`create_train_state`).
      optimizer: `optim.make_optimizer`'s transformation.
      hparams: schedules, accumulation and the objective.

    Returns:
      (new state, metrics): float32 scalars, the objective's (pretraining: loss terms per masked
      frame; `accuracy` is `num_correct / num_masked` of the whole batch, counts summed over
      micro-batches and devices) plus learning_rate, grad_norm and the non-finite counters.
    """
    objective = hparams.objective
    accum = hparams.grad_accum_steps
    grads_sum, sums, counts = _summed_gradients(state, batch, key, graphdef, objective, accum)

    normalizer = counts[objective.normalizer].astype(jnp.float32)
    # fairseq divides the summed loss's gradient by the sample size once.
    grads = objective.frozen_gradients(jax.tree.map(lambda g: g / normalizer, grads_sum), state.step)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm) & (normalizer > 0)

    learning_rate = hparams.learning_rate(state.step)

    def apply_update(params_and_opt_state: tuple[nnx.State, Any]) -> tuple[nnx.State, Any]:
        params, opt_state = params_and_opt_state
        opt_state = optim.set_learning_rate(opt_state, learning_rate)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # A conditional rather than a select between the old and new values: the update then writes
    # into the donated buffers, where a select would keep both copies alive at once.
    new_params, new_opt_state = jax.lax.cond(
        finite, apply_update, lambda params_and_opt_state: params_and_opt_state, (state.params, state.opt_state)
    )
    skipped = (~finite).astype(jnp.int32)
    new_state = dataclasses.replace(
        state,
        step=state.step + 1,
        params=new_params,
        opt_state=new_opt_state,
        nonfinite_total=state.nonfinite_total + skipped,
        nonfinite_consecutive=jnp.where(finite, 0, state.nonfinite_consecutive + 1),
    )
    metrics = {
        **objective.metrics(sums, counts, accum, state.step),
        "learning_rate": jnp.asarray(learning_rate, jnp.float32),
        "grad_norm": grad_norm,
        "skipped_nonfinite": skipped,
        "nonfinite_total": new_state.nonfinite_total,
        "nonfinite_consecutive": new_state.nonfinite_consecutive,
    }
    return new_state, metrics


class TrainStep:
    """`train_step` compiled with explicit shardings, donating the state, one compile per batch shape.

    Each trace (= compile) is counted in `num_compiles` and logged with its batch shape and time;
    batches come in a few fixed shapes, so this stays small (tests assert it).
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        optimizer: optax.GradientTransformation,
        hparams: StepHyperparams,
        mesh: Mesh,
        state_shardings: Any,
    ):
        self.num_compiles = 0
        self.compile_seconds = 0.0
        self._batch_sharding = sharding.batch_sharding(mesh)
        self._flops: dict[tuple[tuple[str, tuple[int, ...]], ...], float] = {}  # per batch shape
        accum = hparams.grad_accum_steps
        # The update XLA's cost analysis reads: one micro-batch's where a loop runs several (compute.py).
        self._counted = functools.partial(
            train_step,
            graphdef=graphdef,
            optimizer=optimizer,
            hparams=dataclasses.replace(hparams, grad_accum_steps=1),
        )
        self._accum = accum
        replicated = sharding.replicated(mesh)

        def traced(state, batch, key):
            self.num_compiles += 1  # runs at trace time only
            logger.info(
                "compiling the train step (#%d) for batch shapes %s",
                self.num_compiles,
                {k: tuple(v.shape) for k, v in batch.items()},
            )
            return train_step(state, batch, key, graphdef=graphdef, optimizer=optimizer, hparams=hparams)

        self._jitted = jax.jit(
            traced,
            in_shardings=(state_shardings, self._batch_sharding, replicated),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        )

    @property
    def batch_sharding(self) -> NamedSharding:
        return self._batch_sharding

    def flops(self, batch: Mapping[str, jax.Array | np.ndarray]) -> float:
        """Model FLOPs of one update on `batch`'s shapes (counted at their first call: `compute.py`)."""
        return self._flops[_shapes(batch)]

    def __call__(
        self, state: TrainState, batch: Mapping[str, jax.Array | np.ndarray], key: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        compiles = self.num_compiles
        start = time.perf_counter()
        shapes = _shapes(batch)
        if shapes not in self._flops:  # before the call: the state is donated to it
            if self._accum == 1:  # the call reuses this trace and lowering, then compiles
                self._flops[shapes] = compute.lowered_flops(self._jitted.lower(state, batch, key))
            else:
                micro = compute.micro_batch(batch, self._accum)
                self._flops[shapes] = compute.update_flops(self._counted, self._accum, state, micro, key)
        out = self._jitted(state, batch, key)
        if self.num_compiles != compiles:
            # The first call of a new shape blocks for tracing and compiling; the run itself is async.
            self.compile_seconds += time.perf_counter() - start
            logger.info("train step compiled in %.1f s", time.perf_counter() - start)
        return out


def _shapes(batch: Mapping[str, jax.Array | np.ndarray]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))


def check_batch(batch: Mapping[str, np.ndarray], rows: int) -> None:
    """ValueError unless `batch` is a `[rows, samples]` batch with a matching attention mask."""
    if "input_values" not in batch:
        raise ValueError(f"batch needs an 'input_values' entry, got keys {sorted(batch)}")
    x = batch["input_values"]
    if x.ndim != 2:
        raise ValueError(f"input_values must be [batch, samples], got shape {x.shape}")
    if x.shape[0] != rows:
        raise ValueError(f"batch has {x.shape[0]} rows, expected {rows} (train.batch_size / processes)")
    mask = batch.get("attention_mask")
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_values shape {x.shape}")
