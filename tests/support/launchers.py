"""Launchers in the tests: parsed and run in this process on a flag registry of their own, or run as
subprocesses the way users run them."""

import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import ModuleType, SimpleNamespace

from absl import flags
from filelock import FileLock

from tests.support import HANG_TIMEOUT, REPO, xla_flags
from w2v_jax.cli import parse_flags

# The modules of `w2v_jax.cli` that the launchers share (`w2v_jax/cli/__init__.py`); every other one is a launcher.
SHARED_CLI_MODULES = (
    "bad_files",
    "beam_search_flags",
    "checkpoint_flags",
    "config_flag",
    "launching",
    "long_form_flags",
    "probe_flags",
    "run_faults",
)


def launcher_names() -> list[str]:
    """The launchers: the modules of `w2v_jax/cli/` that are commands (`w2v-<name>`)."""
    modules = {p.stem for p in (REPO / "w2v_jax" / "cli").glob("*.py")} - {"__init__"}
    assert set(SHARED_CLI_MODULES) <= modules, set(SHARED_CLI_MODULES) - modules
    return sorted(modules - set(SHARED_CLI_MODULES))


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


def subprocess_env(cache_dir: str | os.PathLike, devices: int = 1, *, long_run: bool = False) -> dict[str, str]:
    """The environment of a launcher subprocess: CPU only, `devices` simulated devices compiled as
    `xla_flags` says, and JAX's persistent compilation cache in `cache_dir` for every compile, so the
    runs of a test session compile each program once (and none writes to the user's cache)."""
    return {
        **os.environ,
        "XLA_FLAGS": xla_flags(devices, long_run=long_run),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "MPLBACKEND": "Agg",
    }


def run(
    module: str, args: Sequence[str], env: dict[str, str], timeout: float = HANG_TIMEOUT
) -> subprocess.CompletedProcess:
    """`python -m module args` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def shared_run(folder: pathlib.Path, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """`folder`, built by `build(folder)` once per test session: the first pytest-xdist worker that asks
    builds it under a file lock, the others wait for it and reuse it (a module-scoped fixture would be
    built again by every worker that runs one of the module's tests). Readers must not modify it."""
    with FileLock(f"{folder}.lock"):
        if not pathlib.Path(f"{folder}.finished").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            build(folder)
            pathlib.Path(f"{folder}.finished").touch()
    return folder
