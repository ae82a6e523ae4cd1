"""Where our train step spends its time: a `jax.profiler` trace and its busiest XLA operations."""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import statistics
import time

import jax
import ml_collections

from w2v_jax.research.benchmark import BenchmarkSettings, JaxRunner, benchmark_task


@dataclasses.dataclass(frozen=True)
class OpTime:
    """One XLA operation's share of a profiled train step."""

    name: str
    milliseconds_per_step: float
    calls_per_step: float


def _is_xla_op_line(line_name: str) -> bool:
    # CPU: the XLA thunks' worker threads; GPU: the "XLA Ops" line of the device plane.
    return line_name.startswith("tf_XLAEigen") or line_name == "XLA Ops"


def busiest_ops(profile_path: str | os.PathLike, steps: int) -> tuple[list[OpTime], float]:
    """Time per XLA operation in a `jax.profiler` trace of `steps` train steps, busiest first.

    Only operations that emit their own trace event are named: on CPU, convolutions that XLA
    hands to Eigen's thread pool do not, so their time is in the wall time but in no op.

    Args:
      profile_path: an `.xplane.pb` file written by `jax.profiler.trace`.
      steps: train steps the trace covers (the times are divided by it).

    Returns:
      (the ops, the summed time of all of them in ms per step).
    """
    data = jax.profiler.ProfileData.from_file(str(profile_path))
    total_ns: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not _is_xla_op_line(line.name):
                continue
            for event in line.events:
                if "::" in event.name:  # executor and thread-pool bookkeeping, not an op
                    continue
                total_ns[event.name] += event.duration_ns
                calls[event.name] += 1
    ops = [OpTime(name, ns / 1e6 / steps, calls[name] / steps) for name, ns in total_ns.most_common()]
    return ops, sum(total_ns.values()) / 1e6 / steps


def profile_train_step(
    config: ml_collections.ConfigDict, settings: BenchmarkSettings, logdir: str | os.PathLike, top: int = 25
) -> list[str]:
    """Traces `settings.steps` of our train step for the config's task (`benchmark.benchmark_task`; after
    the warm-up) and reports its busiest XLA ops.

    The trace stays in `logdir` (TensorBoard's profile plugin or Perfetto open it).

    Returns:
      report lines: the median step time, the time the named ops account for, then the `top`
      busiest ops with their HLO names (look them up in the compiled step's HLO text).
    """
    runner = JaxRunner(benchmark_task(config), settings, jax.devices()[0])
    for _ in range(settings.warmup):
        runner.step()
    seconds = []
    with jax.profiler.trace(str(logdir)):
        for _ in range(settings.steps):
            start = time.perf_counter()
            runner.step()
            seconds.append(time.perf_counter() - start)
    trace = max(pathlib.Path(logdir).rglob("*.xplane.pb"), key=lambda path: path.stat().st_mtime)
    ops, named_ms = busiest_ops(trace, settings.steps)
    lines = [
        f"profile: median_step_s={statistics.median(seconds):.4f} named_ops_ms_per_step={named_ms:.1f} "
        f"(summed over threads; CPU convolutions run by Eigen are not named) trace={trace}"
    ]
    lines += [f"{op.milliseconds_per_step:10.2f} ms x{op.calls_per_step:g}  {op.name}" for op in ops[:top]]
    return lines
