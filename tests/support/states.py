"""Small train-state-like pytrees for the checkpoint tests, and the restore target of a run's whole state."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from w2v_jax import sharding
from w2v_jax.checkpoints.run_layout import CONFIG_FILE
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.training import optim, train_step


def make_state(value: float, mesh=None):
    """A train-state-like pytree: nnx params, optax state, integer counters."""
    with nnx.use_eager_sharding(False):
        model = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    params = jax.tree.map(lambda x: jnp.full_like(x, value), params)
    opt_state = optax.adamw(1e-3).init(params)
    state = {"step": jnp.asarray(int(value), jnp.int32), "params": params, "opt_state": opt_state}
    if mesh is not None:
        state = jax.device_put(state, sharding.state_shardings(state, mesh, "fsdp", min_fsdp_size=16))
    return state


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def whole_state_target(workdir: pathlib.Path):
    """The restore target of a pretraining workdir's whole train state (parameters, optimizer
    moments, counters) on one device: what a resume reads, beside what `load_model` reads."""
    config = ml_collections.ConfigDict(json.loads((workdir / CONFIG_FILE).read_text()))
    _, state, shardings = train_step.abstract_train_state(
        Wav2Vec2Config.from_run_config(config),
        optim.optimizer_from_train_config(config.train),
        model_class=Wav2Vec2ForPreTraining,
        mesh=sharding.make_mesh(devices=jax.devices()[:1]),
    )
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
