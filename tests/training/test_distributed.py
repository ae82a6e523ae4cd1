"""Tests of w2v_jax/distributed.py: start-up arguments, and the cross-process exchanges on two processes.

The two-process training run (matching the single-process run) is in tests/e2e/test_pretrain.py,
beside the single-process run it is compared with.
"""

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.support import HANG_TIMEOUT, REPO
from tests.support.launchers import subprocess_env
from w2v_jax.training import distributed


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(coordinator_address="localhost:1234"), "num_processes"),
        (dict(coordinator_address="localhost:1234", num_processes=2, process_id=2), "process_id"),
        (dict(num_processes=2, process_id=0), "without distributed.coordinator_address"),
    ],
)
def test_initialize_rejects_incomplete_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs)


def test_single_process_needs_no_runtime(monkeypatch):
    for name in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.initialize() is False  # one SLURM task: nothing to coordinate
    assert distributed.is_primary()
    value = {"epoch": 2, "rows": [1, 2], "name": "é"}
    assert distributed.allgather_json(value) == [value]


WORKER = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from w2v_jax import sharding
    from w2v_jax.training import distributed
    address, pid = sys.argv[1], int(sys.argv[2])
    assert distributed.initialize(address, 2, pid)
    mesh = sharding.make_mesh()
    # Each process contributes its rows of a global [4, 3] batch; a jitted sum sees all of them.
    local = np.full((2, 3), pid + 1, np.float32)
    batch = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), local, (4, 3))
    total = jax.jit(jnp.sum, out_shardings=sharding.replicated(mesh))(batch)
    gathered = distributed.allgather_json({"pid": pid, "payload": "x" * (10 + 50 * pid)})
    print(json.dumps({"devices": jax.device_count(), "total": float(total), "gathered": gathered}))
    """
)


@pytest.mark.slow
def test_two_processes_exchange_batches_and_json(compilation_cache):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        address = f"localhost:{s.getsockname()[1]}"
    env = subprocess_env(compilation_cache, devices=2)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, address, str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=HANG_TIMEOUT) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    for r in results:
        assert r["devices"] == 4  # 2 processes x 2 local devices
        assert r["total"] == 2 * 3 * 1 + 2 * 3 * 2
        assert r["gathered"] == [{"pid": 0, "payload": "x" * 10}, {"pid": 1, "payload": "x" * 60}]
