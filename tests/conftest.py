"""Test-session set-up: eight simulated CPU devices, float32 everywhere."""

import os

# Must happen before jax is imported anywhere: sharding tests need several devices, and CI has one
# CPU. The test models are tiny, so compilation dominates their time: skipping LLVM's optimisation
# passes halves it (numerics are unchanged: no fast-math either way).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
