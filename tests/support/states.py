"""Small train-state-like pytrees for the checkpoint tests."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from w2v_jax import sharding


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
