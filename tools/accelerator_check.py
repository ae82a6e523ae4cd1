"""The accelerator check: what a short GPU loan must find out, in priority order, each step capped in time.
A maintenance tool of this repository, run from its root:

    python -m tools.accelerator_check --output=$OUT/check
    python -m tools.accelerator_check --output=/tmp/check --dry_run

docs/performance.md has the device command (wheels first: `tools/device_wheels.py`). Exits 1 when
anything failed (listed last).

`run_check` runs four steps, each as subprocesses with its own time cap inside one overall budget
(one 10-minute call of a lent GPU machine), and writes each result as soon as it exists into one
folder, packed into one archive at the end (a GPU machine hands back at most 8 files):

1. environment (`environment_report`): devices, versions, the compatibility checks of the JAX/Flax
   APIs we use (`compatibility_report`), an import of every module of the package, a tiny forward
   pass (accelerator against CPU) and tiny train steps in float32 and bfloat16, the bf16 matmul
   rate, and on a GPU the attention paths (`attention_report`);
2. benchmark: `python -m experiments.benchmark` for base at 15 s crops and the batch that fills the device,
   bf16 then float32 with `--vs_pytorch` (transformers in bf16 autocast with SDPA attention), then
   bf16 with cuDNN's attention (dropout in the kernel), with remat, and without attention dropout;
3. tests: the accelerator-relevant test files (`ACCELERATOR_TEST_FILES`) on the device;
4. pretraining: a short bf16 run of the small config (no feature penalty, ~100 warm-up updates)
   whose contrastive accuracy must leave chance (`pretraining_verdict`).

`dry_run` runs steps 1, 2 and 4 on the CPU with the tiny config in float32 (XLA:CPU compiles a bf16
step several times slower; step 1 without its train steps, which steps 2 and 4 run there) and step 3
as collection only: the test suite runs it. The files: `summary.json` (rewritten after every
command), one log per step (`1_environment.log`, ...), and `accelerator_check.tar.gz` of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import json
import os
import pathlib
import pkgutil
import platform
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

import w2v_jax
from w2v_jax import context_network
from w2v_jax.cli.launching import launch
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.configs import pretrain as pretrain_configs
from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.layers import dropout
from w2v_jax.model import Wav2Vec2Model
from w2v_jax.research import benchmark
from w2v_jax.training import compute, metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
ARCHIVE = "accelerator_check.tar.gz"
SUMMARY = "summary.json"
PRETRAIN_CONFIG = "experiments/configs/pretrain.py"
# The test files whose code runs differently on an accelerator: model parity against the
# reference, attention paths, the train step, sharding over the devices there are, remat, benchmark.
ACCELERATOR_TEST_FILES = (
    "tests/test_model_parity.py",
    "tests/test_context_network.py",
    "tests/test_layers.py",
    "tests/training/test_train_step.py",
    "tests/test_sharding.py",
    "tests/research/test_benchmark.py",
)
# The distributions whose versions the report lists (the image's, or those carried as wheels).
DISTRIBUTIONS = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "flax",
    "optax",
    "orbax-checkpoint",
    "chex",
    "numpy",
    "scipy",
    "ml-dtypes",
    "torch",
    "transformers",
    "grain",
    "librosa",
    "soundfile",
    "soxr",
    "ml-collections",
    "tensorboardX",
    "array-record",
    "jiwer",
)
# A contrastive accuracy this many times the chance level's counts as having left chance.
LEFT_CHANCE_FACTOR = 2.0


@dataclasses.dataclass(frozen=True)
class CheckSettings:
    """What `run_check` runs.

    Attributes:
      output: the folder of the results (created).
      dry_run: CPU, tiny sizes, tests collected only.
      budget_seconds: the whole check's wall-time limit (the steps' caps are cut to what is left).
      seconds: the benchmark's utterance length.
      pretrain_steps, pretrain_batch: the pretraining step's updates and batch.
      steps: which steps to run (a second call reruns those the first left unfinished).
    """

    output: pathlib.Path
    dry_run: bool = False
    budget_seconds: float = 540.0
    seconds: float = 15.0
    pretrain_steps: int = 300
    pretrain_batch: int = 32
    steps: tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self) -> None:
        if self.budget_seconds <= 0 or self.seconds <= 0 or self.pretrain_steps < 1 or self.pretrain_batch < 1:
            raise ValueError(f"accelerator check settings must be positive, got {self}")
        if not self.steps or not set(self.steps) <= {1, 2, 3, 4}:
            raise ValueError(f"steps must be among 1, 2, 3, 4, got {self.steps}")


@dataclasses.dataclass(frozen=True)
class Command:
    """One subprocess of a step: `argv(previous_output)` (so a command can reuse a figure an earlier
    command of its step printed), its own time cap, extra environment."""

    label: str
    argv: Callable[[str], list[str]]
    cap_seconds: float
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Step:
    """A numbered step: its commands, in priority order, and a verdict read off their output."""

    number: int
    name: str
    commands: tuple[Command, ...]
    verdict: Callable[[str], dict[str, Any]] | None = None

    @property
    def log_name(self) -> str:
        return f"{self.number}_{self.name}.log"


# --- step 1: the environment -------------------------------------------------------------------------


def _guarded(report: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    """`report[name] = fn()`, or the error's last line and a failure mark: one check's failure
    doesn't stop the others."""
    start = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as error:  # noqa: BLE001 - every failure is a finding to report, not to raise
        report[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        report.setdefault("failed", []).append(name)
        traceback.print_exc()
    print(f"[{time.perf_counter() - start:.1f}s] {name}: {json.dumps(report[name], default=str)[:3000]}", flush=True)


def versions() -> dict[str, str | None]:
    """The installed version of each of `DISTRIBUTIONS` (None: not installed), and where jax and flax come from."""
    found: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    found["jax_path"] = os.path.dirname(jax.__file__)
    found["flax_path"] = os.path.dirname(nnx.__file__)
    return found


def compatibility_report() -> dict[str, bool | str]:
    """The APIs of JAX and Flax this package relies on whose form changed or may change between our
    pins and newer releases (docs/performance.md, "JAX and Flax on the GPU machine"): True where the
    installed version has the form we call, else a description of what differs."""
    checks: dict[str, bool | str] = {}
    attention = inspect.signature(jax.nn.dot_product_attention).parameters
    checks["jax.nn.dot_product_attention(implementation=)"] = "implementation" in attention or "no implementation"
    fused = context_network.fused_attention_stablehlo
    if fused is None:
        checks["cudnn fused attention with dropout"] = "jax._src.cudnn.fused_attention_stablehlo is gone"
    else:
        parameters = inspect.signature(fused.dot_product_attention).parameters
        missing = {"bias", "scale", "seed", "dropout_rate", "qkv_layout"} - set(parameters)
        checks["cudnn fused attention with dropout"] = not missing or f"missing parameters {sorted(missing)}"
    checks["jax.core.Tracer"] = hasattr(jax.core, "Tracer") or "jax.core.Tracer is gone"
    checks["jax.make_mesh"] = hasattr(jax, "make_mesh") or "jax.make_mesh is gone"
    checks["jax.checkpoint"] = callable(getattr(jax, "checkpoint", None)) or "jax.checkpoint is gone"
    for name in ("split", "merge", "state", "update", "eval_shape", "graphdef", "List", "Param", "Rngs"):
        checks[f"flax.nnx.{name}"] = hasattr(nnx, name) or f"flax.nnx.{name} is gone"
    return checks


def import_every_module() -> dict[str, Any]:
    """Imports every module of the package; the ones that fail, with their errors."""
    failed: dict[str, str] = {}
    names = [info.name for info in pkgutil.walk_packages(w2v_jax.__path__, "w2v_jax.")]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - reported, one line per module
            failed[name] = f"{type(error).__name__}: {error}"[:500]
    return {"modules": len(names), "failed": failed}


def tiny_forward(device: jax.Device) -> dict[str, Any]:
    """The tiny encoder's output on `device` and on the CPU (same weights, float32): the largest gap."""
    model = Wav2Vec2Model(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    waveforms = np.random.default_rng(0).standard_normal((2, SAMPLE_RATE)).astype(np.float32)

    def forward(state: nnx.State, waveforms: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(waveforms).last_hidden_state

    outputs = {}
    for target in (device, jax.devices("cpu")[0]):
        placed = jax.device_put((state, waveforms), target)
        outputs[target.platform] = np.asarray(jax.jit(forward)(*placed))
    values = list(outputs.values())
    return {
        "shape": list(values[0].shape),
        "finite": bool(np.isfinite(values[0]).all()),
        "max_abs_gap_vs_cpu": float(np.max(np.abs(values[0] - values[-1]))),
    }


def tiny_train_steps(device: jax.Device) -> dict[str, Any]:
    """Tiny pretraining train steps (the trainer's step) in float32 and bfloat16: losses and compile times."""
    config = pretrain_configs.get_config("tiny")
    out = {}
    for precision in benchmark.PRECISIONS:
        settings = benchmark.BenchmarkSettings(batch_size=2, seconds=1.0, steps=2, warmup=1, precision=precision)
        task = benchmark.benchmark_task(config)
        runner = benchmark.JaxRunner(task, settings, device)
        for _ in range(settings.warmup + settings.steps):
            runner.step()
        losses = runner.values("loss")
        out[precision] = {
            "losses": losses,
            "finite": bool(np.isfinite(losses).all()),
            "compile_s": round(runner.compiled.compile_seconds, 2),
        }
    return out


def matmul_rate(device: jax.Device, dry_run: bool) -> dict[str, float]:
    """The best bf16 `[n, n] @ [n, n]` rate (the benchmark's MFU yardstick), in TFLOP/s."""
    size = 256 if dry_run else None
    return {"bf16_tflops": compute.matmul_peak_flops(device, jnp.bfloat16, size=size) / 1e12}


def attention_report(device: jax.Device) -> dict[str, Any]:
    """The GPU's attention paths on one BASE-sized input (bf16, 12 heads of 64, 750 frames: 15 s).

    cuDNN against the spelled-out path without dropout (largest gap); with dropout 0.1, whether
    cuDNN's mask changes from one call to the next (its seed is static) and between seeds, and the
    forward + backward time of each path (the spelled-out one with its mask drawn from a key).
    """
    batch, time_steps, heads, head_dim = 4, 750, 12, 64
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (
        jax.device_put(jax.random.normal(kk, (batch, time_steps, heads, head_dim), jnp.bfloat16), device)
        for kk in keys[:3]
    )
    scale = head_dim**-0.5
    explicit = jax.jit(lambda q, k, v: context_network.explicit_attention(q, k, v, None, scale))
    cudnn = jax.jit(
        lambda q, k, v, rate, seed: context_network.cudnn_attention(q, k, v, None, scale, rate, seed),
        static_argnums=(3, 4),
    )
    report: dict[str, Any] = {
        "no_dropout_max_abs_gap": float(
            jnp.max(jnp.abs(explicit(q, k, v) - cudnn(q, k, v, 0.0, 0)).astype(jnp.float32))
        )
    }
    first, second, other_seed = cudnn(q, k, v, 0.1, 0), cudnn(q, k, v, 0.1, 0), cudnn(q, k, v, 0.1, 1)
    report["dropout_mask_changes_between_calls"] = bool(jnp.any(first != second))
    report["dropout_mask_changes_with_seed"] = bool(jnp.any(first != other_seed))

    def timed(fn: Callable[..., jax.Array], *args: Any) -> float:
        grad = jax.jit(jax.grad(lambda q, *rest: jnp.sum(fn(q, *rest).astype(jnp.float32))))
        grad(*args).block_until_ready()
        start = time.perf_counter()
        for _ in range(10):
            grad(*args).block_until_ready()
        return (time.perf_counter() - start) / 10 * 1e3

    def explicit_dropout(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        keep = dropout(jnp.ones((batch, heads, time_steps, time_steps)), 0.1, keys[3], False)
        return context_network.explicit_attention(q, k, v, None, scale, keep)

    report["fwd_bwd_ms"] = {
        "explicit_dropout": timed(explicit_dropout, q, k, v),
        "cudnn_dropout": timed(lambda q, k, v: context_network.cudnn_attention(q, k, v, None, scale, 0.1, 0), q, k, v),
        "fused_no_dropout": timed(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=scale), q, k, v),
    }
    return report


def environment_report(dry_run: bool) -> dict[str, Any]:
    """Step 1 (see the module docstring): every check guarded, printed as it finishes."""
    report: dict[str, Any] = {}
    device = jax.devices()[0]
    _guarded(
        report,
        "devices",
        lambda: {
            "backend": jax.default_backend(),
            "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
            "process_count": jax.process_count(),
            "machine": platform.machine(),
        },
    )
    _guarded(report, "versions", versions)
    _guarded(report, "compatibility", compatibility_report)
    _guarded(report, "imports", import_every_module)
    _guarded(report, "tiny_forward", lambda: tiny_forward(device))
    if not dry_run:  # a dry run's steps 2 and 4 run the same train step on the CPU
        _guarded(report, "tiny_train_steps", lambda: tiny_train_steps(device))
    _guarded(report, "matmul", lambda: matmul_rate(device, dry_run))
    if device.platform == "gpu":
        _guarded(report, "attention", lambda: attention_report(device))
    problems = [name for name, ok in report.get("compatibility", {}).items() if ok is not True]
    problems += list(report.get("imports", {}).get("failed", {}))
    if problems or report.get("failed"):
        print(f"ENVIRONMENT PROBLEMS: failed={report.get('failed', [])} incompatible={problems}", flush=True)
    print("ENVIRONMENT_JSON " + json.dumps(report, default=str), flush=True)
    return report


# --- steps 2 to 4: commands --------------------------------------------------------------------------


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _fill_batch(output: str, default: int) -> int:
    """The last `fill_batch=N` an earlier benchmark of the step printed."""
    found = re.findall(r"fill_batch=(\d+)", output)
    return int(found[-1]) if found else default


def benchmark_step(settings: CheckSettings) -> Step:
    """Step 2: base at `settings.seconds` and the batch that fills the device, bf16 then float32 against
    the reference, then bf16 variants at the bf16 batch (on a dry run: tiny, 1 s, batch 1, float32 only)."""
    if settings.dry_run:
        config, seconds, timing = f"{PRETRAIN_CONFIG}:tiny", 1.0, ["--timed_steps=1", "--warmup_steps=0"]
        fill = ["--batch=1"]  # no fill probe: one compile fewer (tests/research/test_benchmark.py tests it)
    else:
        config, seconds, timing = f"{PRETRAIN_CONFIG}:base", settings.seconds, ["--timed_steps=5", "--warmup_steps=2"]
        fill = ["--batch=0"]
    base = _python("-m", "experiments.benchmark", f"--config={config}", f"--seconds={seconds}", *timing)

    precision = "float32" if settings.dry_run else "bfloat16"
    bf16 = f"--precision={precision}"

    def at_fill(*extra: str) -> Callable[[str], list[str]]:
        return lambda output: [*base, f"--batch={_fill_batch(output, 1)}", bf16, *extra]

    # Both frameworks share the device: allocate as needed, not JAX's default 75% up front.
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    commands = [Command(f"{precision}_vs_pytorch", lambda _: [*base, *fill, bf16, "--vs_pytorch"], 170, env)]
    if not settings.dry_run:  # the dry run's step 1 has compiled the float32 step
        commands += [
            Command("float32_vs_pytorch", lambda _: [*base, *fill, "--precision=float32", "--vs_pytorch"], 150, env),
            Command("bf16_cudnn_attention", at_fill("--config.model.attention_implementation=cudnn"), 80, env),
            Command("bf16_remat", at_fill("--remat"), 80, env),
            Command("bf16_no_attention_dropout", at_fill("--config.model.attention_dropout=0.0"), 80, env),
        ]
    return Step(2, "benchmark", tuple(commands), benchmark_verdict)


def benchmark_verdict(output: str) -> dict[str, Any]:
    """The ratios (`ratio=X`), MFUs and compile times the benchmarks printed, in order."""
    return {
        "ratios": [float(x) for x in re.findall(r"^ratio=([\d.]+)", output, re.M)],
        "w2v_jax_mfu": [float(x) for x in re.findall(r"^w2v_jax:.* mfu=([\d.]+)", output, re.M)],
        "w2v_jax_compile_s": [float(x) for x in re.findall(r"^w2v_jax:.* compile_s=([\d.]+)", output, re.M)],
        "fill_batches": [int(x) for x in re.findall(r"fill_batch=(\d+)", output)],
    }


DEVICE_TEST_XLA_FLAGS = "--xla_force_host_platform_device_count=8"


def tests_step(settings: CheckSettings) -> Step:
    """Step 3: the accelerator-relevant test files, on the device (collected only on a dry run)."""
    mode = ["--collect-only", "-q"] if settings.dry_run else ["-q", "-rfE", "-p", "no:cacheprovider"]
    # conftest.py keeps a platform and XLA flags already chosen: here the accelerator, with eight CPU
    # devices beside it, and none of the suite's CPU compile options, which are the pinned jaxlib's (XLA
    # aborts on a flag it does not know, and the device image has another jaxlib).
    env = {} if settings.dry_run else {"JAX_PLATFORMS": "", "XLA_FLAGS": DEVICE_TEST_XLA_FLAGS}
    command = Command("pytest", lambda _: _python("-m", "pytest", *mode, *ACCELERATOR_TEST_FILES), 100, env)
    return Step(3, "tests", (command,), tests_verdict)


def tests_verdict(output: str) -> dict[str, Any]:
    """pytest's last summary line (`N passed, M failed in S s` or `N tests collected`)."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error|tests? collected)", line)]
    return {"summary": lines[-1].strip("= ") if lines else None}


def pretraining_step(settings: CheckSettings, workdir: pathlib.Path) -> Step:
    """Step 4: a short bf16 pretraining of the small config (tiny, float32, 2 updates on a dry run)."""
    eval_every = steps = settings.pretrain_steps
    if settings.dry_run:  # no validation: one compile fewer
        variant, steps, batch, eval_every = "tiny", 2, 2, 1_000
        extra = [f"--config.data.max_sample_size={SAMPLE_RATE}"]
    else:
        variant, batch = "small", settings.pretrain_batch
        # The small model trains fast enough to leave chance in a few hundred updates as LARGE and
        # transformers train: no feature penalty, the whole encoder gradient.
        extra = [
            "--config.model.feature_penalty_weight=0.0",
            "--config.model.feature_grad_mult=1.0",
            "--config.train.learning_rate=1e-3",
            f"--config.train.warmup_steps={min(100, steps // 3)}",
        ]
    argv = _python(
        "-m",
        "experiments.pretrain",
        f"--config={PRETRAIN_CONFIG}:{variant}",
        f"--workdir={workdir}",
        f"--config.train.precision={'float32' if settings.dry_run else 'bfloat16'}",
        f"--config.train.num_steps={steps}",
        f"--config.train.batch_size={batch}",
        f"--config.train.log_every={max(1, steps // 10)}",
        f"--config.train.checkpoint_every={steps}",
        f"--config.train.eval_every={eval_every}",
        "--config.train.plot=False",
        *extra,
    )
    return Step(4, "pretraining", (Command("pretrain", lambda _: argv, 150),), lambda _: pretraining_verdict(workdir))


def pretraining_verdict(workdir: pathlib.Path) -> dict[str, Any]:
    """The last logged contrastive accuracy against its chance level (`LEFT_CHANCE_FACTOR` times it)."""
    path = workdir / metrics.METRICS_FILE
    records = [r for r in metrics.read_metrics(path) if "chance_accuracy" in r] if path.is_file() else []
    if not records:
        return {"left_chance": None, "reason": "no metrics logged"}
    last = records[-1]
    return {
        "step": last.get("step"),
        "accuracy": last["accuracy"],
        "chance_accuracy": last["chance_accuracy"],
        "left_chance": bool(last["accuracy"] > LEFT_CHANCE_FACTOR * last["chance_accuracy"]),
        "audio_seconds_per_second": last.get("audio_seconds_per_second"),
    }


# --- running ------------------------------------------------------------------------------------------


def environment_step(settings: CheckSettings) -> Step:
    """Step 1, in a subprocess of its own (a crash or hang of the runtime is a finding too)."""
    code = f"from tools import accelerator_check as c; c.environment_report(dry_run={settings.dry_run})"
    return Step(1, "environment", (Command("environment", lambda _: _python("-c", code), 120),), environment_verdict)


def environment_verdict(output: str) -> dict[str, Any]:
    """Step 1's report (the `ENVIRONMENT_JSON` line)."""
    found = re.findall(r"^ENVIRONMENT_JSON (.*)$", output, re.M)
    return json.loads(found[-1]) if found else {"error": "no report printed"}


def run_command(command: Command, argv: list[str], log: Any, cap_seconds: float) -> tuple[str, float, int | None]:
    """Runs `argv` from the repository root, its output appended to `log`, killed (its whole process
    group) after `cap_seconds`. Returns (status: ok | failed | timeout, seconds, return code)."""
    log.write(f"\n=== {command.label} (cap {cap_seconds:.0f} s): {' '.join(argv)}\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **command.env}
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = process.wait(timeout=cap_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.write(f"\n=== {command.label}: killed at its cap of {cap_seconds:.0f} s\n")
        return "timeout", time.perf_counter() - start, None
    seconds = time.perf_counter() - start
    log.write(f"\n=== {command.label}: exit {code} after {seconds:.1f} s\n")
    log.flush()
    return ("ok" if code == 0 else "failed"), seconds, code


def run_check(settings: CheckSettings, *, print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the four steps (module docstring) within `settings.budget_seconds` into `settings.output`;
    returns the summary (`run_steps`)."""
    with tempfile.TemporaryDirectory() as scratch:
        steps = [
            environment_step(settings),
            benchmark_step(settings),
            tests_step(settings),
            pretraining_step(settings, pathlib.Path(scratch) / "pretraining"),
        ]
        steps = [step for step in steps if step.number in settings.steps]
        summary = run_steps(steps, settings.output, settings.budget_seconds, print_fn=print_fn)
    summary["dry_run"] = settings.dry_run
    _write_summary(settings.output, summary)
    pack(settings.output)
    return summary


def run_steps(
    steps: Sequence[Step], output: pathlib.Path, budget_seconds: float, *, print_fn: Callable[[str], None] = print
) -> dict[str, Any]:
    """Runs the steps' commands in order, each within its cap and what is left of the budget, their
    output into one log per step; a command left less than `MIN_CAP_SECONDS` is skipped. The
    summary (statuses, times, verdicts) is rewritten to `output/summary.json` after every command,
    and the folder packed into `accelerator_check.tar.gz` at the end."""
    output.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_seconds
    summary: dict[str, Any] = {"budget_s": budget_seconds, "steps": []}
    for step in steps:
        record: dict[str, Any] = {"step": step.number, "name": step.name, "commands": []}
        summary["steps"].append(record)
        log_path = output / step.log_name
        with open(log_path, "w", encoding="utf-8") as log:
            for command in step.commands:
                cap = min(command.cap_seconds, deadline - time.monotonic())
                if cap < MIN_CAP_SECONDS:
                    record["commands"].append({"label": command.label, "status": "skipped (budget spent)"})
                    continue
                argv = command.argv(log_path.read_text(encoding="utf-8"))
                status, seconds, code = run_command(command, argv, log, cap)
                record["commands"].append(
                    {"label": command.label, "status": status, "seconds": round(seconds, 1), "exit": code}
                )
                _write_summary(output, summary)
                print_fn(f"step {step.number} {step.name} / {command.label}: {status} in {seconds:.1f} s")
        if step.verdict is not None:
            try:
                record["verdict"] = step.verdict(log_path.read_text(encoding="utf-8"))
            except Exception as error:  # noqa: BLE001 - a verdict that can't be read is reported
                record["verdict"] = {"error": f"{type(error).__name__}: {error}"}
        _write_summary(output, summary)
    pack(output)
    return summary


# Below this a command has no time to import its frameworks and compile: it is skipped.
MIN_CAP_SECONDS = 20.0


def _write_summary(output: pathlib.Path, summary: dict[str, Any]) -> None:
    tmp = output / f"{SUMMARY}.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(output / SUMMARY)


def pack(output: pathlib.Path) -> pathlib.Path:
    """The folder's files (the summary and the logs) in one `accelerator_check.tar.gz` inside it."""
    archive = output / ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(output.iterdir()):
            if path.name != ARCHIVE and path.is_file():
                tar.add(path, arcname=path.name)
    return archive


def problems(summary: dict[str, Any]) -> list[str]:
    """What went wrong: commands not ok (failed, timed out, skipped), step 1's failed or incompatible
    checks, a pretraining that did not leave chance (judged only outside a dry run)."""
    found = [
        f"{record['name']}/{c['label']}: {c['status']}"
        for record in summary["steps"]
        for c in record["commands"]
        if c["status"] != "ok"
    ]
    for record in summary["steps"]:
        verdict = record.get("verdict") or {}
        if record["name"] == "environment":
            found += [f"environment/{name}: failed" for name in verdict.get("failed", [])]
            found += [
                f"environment/compatibility: {name}: {ok}"
                for name, ok in verdict.get("compatibility", {}).items()
                if ok is not True
            ]
            found += [f"environment/import {name}" for name in verdict.get("imports", {}).get("failed", {})]
        if record["name"] == "pretraining" and not summary.get("dry_run") and verdict.get("left_chance") is not True:
            found.append(f"pretraining: did not leave chance ({verdict})")
    return found


def summary_lines(summary: dict[str, Any]) -> Sequence[str]:
    """One line per step: its commands' statuses and its verdict."""
    lines = []
    for record in summary["steps"]:
        statuses = ", ".join(f"{c['label']}={c['status']}" for c in record["commands"])
        verdict = json.dumps(record.get("verdict"), default=str)[:400]
        lines.append(f"{record['step']} {record['name']}: {statuses}; verdict {verdict}")
    return lines


# --- the command ----------------------------------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The tool's flags on `flag_values` (`argv` unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        output=flags.DEFINE_string("output", "accelerator_check", "Folder of the results.", flag_values=fv),
        dry_run=flags.DEFINE_bool(
            "dry_run", False, "CPU, tiny sizes, tests collected only (about a minute).", flag_values=fv
        ),
        budget_s=flags.DEFINE_float("budget_s", 540.0, "Wall-time limit of the whole check.", flag_values=fv),
        seconds=flags.DEFINE_float("seconds", 15.0, "The benchmark's utterance length.", flag_values=fv),
        pretrain_steps=flags.DEFINE_integer("pretrain_steps", 300, "Updates of the pretraining step.", flag_values=fv),
        pretrain_batch=flags.DEFINE_integer("pretrain_batch", 32, "Batch of the pretraining step.", flag_values=fv),
        steps=flags.DEFINE_list("steps", ["1", "2", "3", "4"], "Which steps to run (e.g. 2,4).", flag_values=fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    settings = CheckSettings(
        output=pathlib.Path(args.output.value),
        dry_run=args.dry_run.value,
        budget_seconds=args.budget_s.value,
        seconds=args.seconds.value,
        pretrain_steps=args.pretrain_steps.value,
        pretrain_batch=args.pretrain_batch.value,
        steps=tuple(int(step) for step in args.steps.value),
    )
    summary = run_check(settings, print_fn=lambda line: print(line, flush=True))
    for line in summary_lines(summary):
        print(line, flush=True)
    found = problems(summary)
    if found:
        print("PROBLEMS:\n  " + "\n  ".join(found), flush=True)
        raise SystemExit(1)


def run() -> None:
    """`python -m tools.accelerator_check`."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
