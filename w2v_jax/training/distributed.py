"""Multi-host start-up and the few cross-process exchanges the trainer needs.

One Python process per host (per GPU on GPU clusters), all running the same program; they meet
at a coordinator (process 0's `host:port`) through `jax.distributed.initialize`. After that
`jax.devices()` lists every device of every process, the mesh spans them all, and each process
feeds its own rows of the global batch (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

# Environment variables that mean "launched by a cluster manager JAX can read the topology from".
_AUTO_DETECT_ENV = (
    "SLURM_JOB_ID",  # SLURM (jax reads SLURM_NTASKS, SLURM_PROCID, the node list)
    "TPU_WORKER_HOSTNAMES",  # Cloud TPU pod slices
    "MEGASCALE_COORDINATOR_ADDRESS",  # multi-slice TPU
    "OMPI_COMM_WORLD_SIZE",  # mpirun (jax's Open MPI cluster detection)
)


def _auto_detected() -> bool:
    """True when a cluster manager started several processes that JAX can find each other from."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return False  # a single SLURM task: nothing to coordinate
    if "OMPI_COMM_WORLD_SIZE" in os.environ and int(os.environ["OMPI_COMM_WORLD_SIZE"]) <= 1:
        return False
    return any(name in os.environ for name in _AUTO_DETECT_ENV)


def initialize(
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    local_device_ids: Sequence[int] | None = None,
) -> bool:
    """Starts JAX's multi-process runtime when there is more than one process.

    Explicit: `coordinator_address` ("host:port" of process 0), `num_processes` and `process_id`
    all given. Otherwise auto-detected on SLURM, Cloud TPU pods and Open MPI (JAX reads the
    topology from the environment). Otherwise a single process: nothing to do. Must run before
    anything touches a device.

    Args:
      coordinator_address: "host:port" that process 0 listens on; "" for auto-detection.
      num_processes: total number of processes (explicit mode).
      process_id: this process's index in [0, num_processes) (explicit mode).
      local_device_ids: restrict this process to these local devices (e.g. one GPU per process).

    Returns:
      True when the distributed runtime was started.
    """
    if coordinator_address:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                "distributed.coordinator_address is set, so distributed.num_processes (>= 1) and "
                f"distributed.process_id (in [0, num_processes)) must be too; got num_processes="
                f"{num_processes}, process_id={process_id}"
            )
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
        )
    elif num_processes > 1 or process_id >= 0:
        raise ValueError("distributed.num_processes / process_id given without distributed.coordinator_address")
    elif _auto_detected():
        jax.distributed.initialize(local_device_ids=local_device_ids)
    else:
        return False
    logger.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_primary() -> bool:
    """True on the process that writes shared files (metrics, config, plots)."""
    return jax.process_index() == 0


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order (identity with one process).

    Used for the per-process data-iterator positions that go into each checkpoint.
    """
    if jax.process_count() == 1:
        return [value]
    payload = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.array([payload.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: payload.size] = payload
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(row[: int(n)].tobytes()) for row, n in zip(gathered, np.ravel(lengths))]
