"""What a run's compute amounts to: the model FLOPs of an update and the devices' peak rates.

Quality of a speech encoder follows the hours of speech it has seen (arXiv 2402.13723) and objectives
are compared at equal compute (arXiv 2409.16295), so every logged record carries the audio hours and
model FLOPs done so far, and the model FLOPs utilisation (MFU): FLOPs per second over the devices'
peak (`peak_flops`).

FLOPs are XLA's cost analysis of the update's lowered program (`update_flops`): the whole global
batch, before it is partitioned over devices (a compiled program's analysis counts one device's
share). XLA counts a loop's body once: an update of `grad_accum_steps` micro-batches is counted as one
micro-batch's update times their number (so the optimizer's update, about ten FLOPs a parameter, is
counted once per micro-batch), and the CTC loss's scan over frames counts one frame (its cost is
O(frames x labels), against the encoder's O(frames x parameters)). Rematerialised layers are counted
twice, as the program runs them: the figure is the FLOPs the step does, of which the model's own
are the remat-free figure.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

logger = logging.getLogger(__name__)

# Dense (no sparsity) peak FLOP/s per device from the vendors' datasheets, by the start of
# `jax.Device.device_kind`: (bfloat16, float32). float32 on NVIDIA GPUs is the TF32 tensor-core rate
# (XLA's default precision for float32 matmuls on Ampere and later); on TPUs the default precision
# multiplies float32 in one bfloat16 pass, so both are the bfloat16 rate. Sources: docs/performance.md.
PEAK_FLOPS: Mapping[str, tuple[float, float]] = {
    "NVIDIA A100": (312e12, 156e12),
    "NVIDIA H100 PCIe": (756e12, 378e12),
    "NVIDIA H100": (989e12, 495e12),  # SXM (80GB HBM3)
    "NVIDIA H200": (989e12, 495e12),
    "NVIDIA B200": (2250e12, 1100e12),
    "NVIDIA L4": (121e12, 60e12),
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),  # v5e
    "TPU v5p": (459e12, 459e12),
    "TPU v5": (459e12, 459e12),  # v5p's device kind on some runtimes
    "TPU v6 lite": (918e12, 918e12),  # v6e (Trillium)
}


def table_peak(device_kind: str, precision: str) -> float | None:
    """The table's peak FLOP/s of one device of `device_kind` at `precision` ("float32" or
    "bfloat16"), the longest matching name first; None for a kind the table lacks."""
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if device_kind.startswith(name):
            bf16, f32 = PEAK_FLOPS[name]
            return bf16 if precision == "bfloat16" else f32
    return None


def matmul_peak_flops(device: jax.Device, dtype: jnp.dtype, size: int | None = None, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` timed `[n, n] @ [n, n]` products on `device`.

    The yardstick of the model FLOPs utilisation: what this device reaches on a large dense
    matmul in this run (so a shared or throttled machine is measured as it is now).
    n defaults to 8192 on accelerators and 1024 on CPU (big enough to saturate its cores).
    """
    n = size or (1024 if device.platform == "cpu" else 8192)
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(k1, (n, n), dtype), device)
    b = jax.device_put(jax.random.normal(k2, (n, n), dtype), device)
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


@functools.cache
def peak_flops(precision: str) -> float | None:
    """Peak FLOP/s of all this run's devices together: the table's (`table_peak`) per device on an
    accelerator, the measured matmul rate on CPU; None (one log line) for a device the table lacks."""
    devices = jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        # A process's CPU devices share its cores (one matmul already uses them all): one rate per host.
        dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
        return matmul_peak_flops(devices[0], dtype, repeats=2) * jax.process_count()
    peak = table_peak(kind, precision)
    if peak is None:
        logger.info("no peak FLOP/s known for device kind %r: records carry no mfu", kind)
        return None
    return peak * len(devices)


def lowered_flops(lowered: jax.stages.Lowered, grad_accum_steps: int = 1) -> float:
    """Model FLOPs of one update from XLA's cost analysis of its lowered program, times
    `grad_accum_steps` (module docstring): with more than one, `lowered` is one micro-batch's update
    (`micro_batch`), since XLA counts the accumulation loop's body once."""
    cost = lowered.cost_analysis()
    if isinstance(cost, Sequence):  # some versions return one dict per program
        cost = cost[0]
    if not cost or "flops" not in cost:
        raise ValueError("XLA's cost analysis of the update gave no FLOPs")
    return float(cost["flops"]) * grad_accum_steps


def update_flops(step: Callable[..., Any], grad_accum_steps: int, *args: Any) -> float:
    """`lowered_flops` of `jax.jit(step)` lowered on the abstract shapes of `args` (arrays or
    `jax.ShapeDtypeStruct`s: nothing is computed or compiled)."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    return lowered_flops(jax.jit(step).lower(*abstract), grad_accum_steps)


def micro_batch(batch: Mapping[str, Any], grad_accum_steps: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract shapes of one of `batch`'s `grad_accum_steps` micro-batches (rows divided)."""
    return {k: jax.ShapeDtypeStruct((v.shape[0] // grad_accum_steps, *v.shape[1:]), v.dtype) for k, v in batch.items()}


@dataclasses.dataclass
class Totals:
    """Audio seconds and model FLOPs a run has done, through its last logged record."""

    audio_seconds: float = 0.0
    flops: float = 0.0

    def to_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: Mapping[str, float] | None) -> Totals:
        return cls(**values) if values else cls()

    def add(self, audio_seconds: float, flops: float) -> dict[str, float]:
        """Adds a window's real audio seconds and model FLOPs; the record's cumulative fields
        `audio_hours_seen` and `flops_seen`."""
        self.audio_seconds += audio_seconds
        self.flops += flops
        return {"audio_hours_seen": self.audio_seconds / 3600, "flops_seen": self.flops}
