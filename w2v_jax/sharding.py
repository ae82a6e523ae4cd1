"""Device mesh, batch sharding and parameter sharding rules.

One mesh with two axes, `("data", "fsdp")`: the batch is split over both (every device sees
different utterances), parameters are replicated by default or split over `fsdp` (fully sharded
data parallelism: each device keeps a slice of every large weight, XLA gathers them for the
forward pass and reduce-scatters the gradients). Going from one to the other is the config switch
`mesh.param_sharding = "fsdp"` with `mesh.fsdp > 1`; the train step doesn't change.

Which dimension of a weight is split follows big_vision's FSDP heuristic: the largest dimension
divisible by the `fsdp` axis size, for weights with at least `min_fsdp_size` elements (small
vectors stay replicated, where splitting costs more in communication than it saves in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp")
# Both mesh axes split the batch: FSDP is data parallelism with sharded weights.
BATCH_AXES = ("data", "fsdp")
ParamSharding = Literal["replicated", "fsdp"]


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp")` mesh over all devices (of every process).

    Args:
      data: size of the data axis; -1 fills it with the devices left after `fsdp`.
      fsdp: size of the parameter-sharding axis.
      devices: the devices to use (default `jax.devices()`, global across processes).

    Returns:
      a `jax.sharding.Mesh` with `Auto` axis types (shardings are annotations, XLA propagates).
    """
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1:
        raise ValueError(f"mesh.fsdp must be >= 1, got {fsdp}")
    if data == -1:
        if len(devices) % fsdp:
            raise ValueError(f"{len(devices)} devices can't be split into fsdp groups of {fsdp}")
        data = len(devices) // fsdp
    if data < 1 or data * fsdp != len(devices):
        raise ValueError(f"mesh shape (data={data}, fsdp={fsdp}) needs {data * fsdp} devices, {len(devices)} available")
    return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of `[batch, ...]` arrays: rows split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A copy on every device."""
    return NamedSharding(mesh, P())


def param_partition_spec(
    shape: Sequence[int],
    mesh: Mesh,
    strategy: ParamSharding = "replicated",
    min_fsdp_size: int = 2**14,
) -> P:
    """Partition spec of one parameter (or optimizer moment) of `shape`.

    Args:
      shape: the array's shape.
      mesh: a `make_mesh` mesh.
      strategy: "replicated" or "fsdp".
      min_fsdp_size: arrays with fewer elements stay replicated under "fsdp".

    Returns:
      a `PartitionSpec` whose split dimensions are divisible by the mesh axis sizes.
    """
    if strategy not in ("replicated", "fsdp"):
        raise ValueError(f"unknown param sharding {strategy!r}: expected 'replicated' or 'fsdp'")
    fsdp_size = mesh.shape["fsdp"]
    if strategy == "replicated" or fsdp_size == 1 or int(np.prod(shape)) < min_fsdp_size:
        return P()
    candidates = [i for i in np.argsort(shape)[::-1] if shape[i] % fsdp_size == 0]
    if not candidates:
        return P()
    spec: list[str | None] = [None] * len(shape)
    spec[int(candidates[0])] = "fsdp"
    return P(*spec)


def state_shardings(
    abstract_state: Any, mesh: Mesh, strategy: ParamSharding = "replicated", min_fsdp_size: int = 2**14
) -> Any:
    """NamedShardings for every array of a train state (params, optimizer moments, counters).

    Args:
      abstract_state: a pytree of arrays or `jax.ShapeDtypeStruct`s, nnx Variables included (their
        sharding is returned inside the same Variable).
      mesh: a `make_mesh` mesh.
      strategy: "replicated" or "fsdp" (see `param_partition_spec`).
      min_fsdp_size: see `param_partition_spec`.

    Returns:
      a pytree of the same structure with `NamedSharding` leaves (inside the same Variables).
    """

    def one(leaf: Any) -> Any:
        if isinstance(leaf, nnx.Variable):
            spec = param_partition_spec(leaf.get_value().shape, mesh, strategy, min_fsdp_size)
            return leaf.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, param_partition_spec(np.shape(leaf), mesh, strategy, min_fsdp_size))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
