"""Test-session set-up: eight simulated CPU devices, float32 everywhere."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Must happen before jax is imported anywhere: sharding tests need several devices, and CI has one
# CPU. The test models are tiny, so compilation dominates their time: skipping LLVM's optimisation
# passes halves it (numerics are unchanged: no fast-math either way).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def tiny_pretraining(tmp_path_factory):
    """The README's main run: 300 updates of the tiny pretraining config on the embedded corpus (one
    device, the launcher as users run it); its workdir."""
    workdir = tmp_path_factory.mktemp("tiny_pretraining") / "run"
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
    }
    command = [
        sys.executable, "-m", "experiments.pretrain", "--config=experiments/configs/pretrain.py:tiny",
        f"--workdir={workdir}", "--config.train.plot=False", "--config.train.log_every=50",
    ]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir
