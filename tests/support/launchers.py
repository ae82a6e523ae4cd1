"""Launchers in the tests: parsed and run in this process on a flag registry of their own, or run as
subprocesses the way users run them."""

import os
import subprocess
import sys
from collections.abc import Sequence
from types import ModuleType, SimpleNamespace

from absl import flags

from tests.support import REPO
from w2v_jax.cli import parse_flags


def parse(launcher: ModuleType, argv: Sequence[str]) -> tuple[list[str], SimpleNamespace]:
    """`launcher.define_flags` on a fresh registry, parsed from `argv` (no program name): the
    positional arguments (program name first) and the flag holders."""
    command_line = ["prog", *argv]
    flag_values = flags.FlagValues()
    args = launcher.define_flags(flag_values, command_line)
    return parse_flags(command_line, flag_values), args


def run_main(launcher: ModuleType, argv: Sequence[str]) -> None:
    """`launcher.main` on `argv` parsed by `parse` (the launcher's logic without absl's app)."""
    positional, args = parse(launcher, argv)
    launcher.main(positional, args)


def subprocess_env(cache_dir: str | os.PathLike, devices: int = 1) -> dict[str, str]:
    """The environment of a launcher subprocess: CPU only, `devices` simulated devices, LLVM's
    optimisation passes skipped (the tests' models are tiny) and JAX's persistent compilation cache
    in `cache_dir` for every compile, so the runs of a test session compile each program once."""
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "MPLBACKEND": "Agg",
    }


def run(module: str, args: Sequence[str], env: dict[str, str], timeout: float = 3600) -> subprocess.CompletedProcess:
    """`python -m module args` from the repository root. The timeout only guards against a hang: it
    is many times any run's time on the slowest machine CI has had."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
