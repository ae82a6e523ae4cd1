"""Helpers shared by the tests: the repository's path, how XLA compiles in the tests (`xla_flags`), JSON
nested too deep to parse (`NESTED_JSON`), small generated corpora (`corpus`), an install without the
PyTorch reference (`imports`) and launcher runs in subprocesses (`launchers`)."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]

# The limit of a subprocess or notebook cell of a test: only against a hang. It is many times the
# longest run of any test on the slowest machine CI has had (the tiny fine-tuning run, under 4 min).
HANG_TIMEOUT = 3600

# JSON nested 100000 levels deep (objects holding lists), 0.6 MB: Python's json parser gives up with a
# RecursionError near its recursion limit (1000); every reader of a supplied JSON file must refuse it
# in one line naming the file.
NESTED_JSON = '{"a": [' * 50_000


def xla_flags(devices: int, *, long_run: bool = False) -> str:
    """`XLA_FLAGS` of a test process or launcher subprocess with `devices` simulated CPU devices.

    The test programs are tiny, so compiling dominates their time. A short run (the tests' own
    processes, a launcher run of a few updates) skips LLVM's optimisation passes and emits its fusions
    with XLA's elemental IR emitter into one LLVM module instead of the MLIR fusion emitters split over
    several modules: both compile faster, and the numbers stay the default emitters' up to float32
    rounding (a train step's are the same bits). A `long_run` (hundreds of updates) runs LLVM's first
    level with the default emitters, whose code runs faster: it halves an update of the tiny models for
    a third more compile time than none. docs/performance.md ("The test suite") has the figures.
    """
    fast_compile = "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
    level = "--xla_backend_optimization_level=1" if long_run else f"--xla_backend_optimization_level=0 {fast_compile}"
    return f"--xla_force_host_platform_device_count={devices} {level}"
