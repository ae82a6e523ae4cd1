"""Tests of w2v_jax/sharding.py on 8 simulated CPU devices (tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from w2v_jax import sharding


def test_make_mesh_shapes():
    assert jax.device_count() == 8
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 8, "fsdp": 1}
    mesh = sharding.make_mesh(data=-1, fsdp=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    assert mesh.devices.size == 1


@pytest.mark.parametrize("data,fsdp,match", [(3, 1, "needs 3 devices"), (-1, 3, "fsdp groups"), (1, 0, "fsdp")])
def test_make_mesh_rejects_bad_shapes(data, fsdp, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(data, fsdp)


def test_batch_sharding_splits_rows_over_all_devices():
    mesh = sharding.make_mesh(data=2, fsdp=4)
    x = jax.device_put(np.arange(16 * 3, dtype=np.float32).reshape(16, 3), sharding.batch_sharding(mesh))
    shard_rows = sorted(s.data.shape[0] for s in x.addressable_shards)
    assert shard_rows == [2] * 8


def test_param_partition_spec_rules():
    mesh = sharding.make_mesh(data=2, fsdp=4)
    assert sharding.param_partition_spec((256, 512), mesh, "replicated") == P()
    # largest dimension divisible by the fsdp size
    assert sharding.param_partition_spec((256, 512), mesh, "fsdp", min_fsdp_size=1) == P(None, "fsdp")
    assert sharding.param_partition_spec((512, 6), mesh, "fsdp", min_fsdp_size=1) == P("fsdp", None)
    assert sharding.param_partition_spec((6, 10), mesh, "fsdp", min_fsdp_size=1) == P()
    # small arrays stay whole
    assert sharding.param_partition_spec((8,), mesh, "fsdp", min_fsdp_size=16) == P()
    with pytest.raises(ValueError, match="param sharding"):
        sharding.param_partition_spec((6, 512), mesh, "zero3")


class _TwoLayers(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.up = nnx.Linear(16, 64, rngs=rngs)
        self.down = nnx.Linear(64, 16, rngs=rngs)


def test_fsdp_sharded_forward_equals_numpy():
    """A model whose weights are split over fsdp computes what NumPy computes with whole weights."""
    mesh = sharding.make_mesh(data=2, fsdp=4)
    with nnx.use_eager_sharding(False):  # our shardings come from state_shardings, not at creation
        model = _TwoLayers(nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    shardings = sharding.state_shardings(params, mesh, "fsdp", min_fsdp_size=64)
    assert shardings["up"]["kernel"].get_value().spec == P(None, "fsdp")  # the larger dimension
    assert shardings["down"]["kernel"].get_value().spec == P("fsdp", None)
    assert shardings["up"]["bias"].get_value().spec == P("fsdp")  # 64 elements, divisible
    assert shardings["down"]["bias"].get_value().spec == P()  # 16 elements < min size
    sharded = jax.device_put(params, shardings)
    assert sharded["up"]["kernel"].get_value().addressable_shards[0].data.shape == (16, 16)

    @jax.jit
    def forward(p, x):
        m = nnx.merge(graphdef, p)
        return m.down(jax.nn.relu(m.up(x)))

    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    x_sharded = jax.device_put(x, sharding.batch_sharding(mesh))
    got = forward(sharded, x_sharded)
    w1, b1 = np.asarray(params["up"]["kernel"].get_value()), np.asarray(params["up"]["bias"].get_value())
    w2, b2 = np.asarray(params["down"]["kernel"].get_value()), np.asarray(params["down"]["bias"].get_value())
    want = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_replicated_state_shardings_for_plain_arrays():
    mesh = sharding.make_mesh()
    tree = {"count": jnp.zeros((), jnp.int32), "w": jnp.zeros((64, 64))}
    shardings = sharding.state_shardings(tree, mesh)
    assert shardings["count"].spec == P() and shardings["w"].spec == P()
