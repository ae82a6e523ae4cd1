"""Test-session set-up: eight simulated CPU devices, float32 everywhere; the session's shared folder,
launcher environment, the README's tiny pretraining run and the tiny fine-tuning from it."""

import os
import pathlib

import pytest

from tests.support import xla_flags

# Must happen before jax is imported (it reads JAX_PLATFORMS then): sharding tests need several
# devices, and CI has one CPU.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

from tests.support.launchers import run, shared_run, subprocess_env
from w2v_jax.data import default_manifest
from w2v_jax.data.shard_preparation import prepare_shards

jax.config.update("jax_default_matmul_precision", "highest")


# Fixtures of the session's training runs (`tiny_pretraining`, `tiny_finetuning`: the longest set-up of
# the suite) and of launcher subprocesses, by which `pytest_collection_modifyitems` orders the files.
SHARED_RUNS = ("tiny_pretraining", "tiny_finetuning")
LAUNCHER_RUNS = ("env", "long_run_env")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Orders the test files so that pytest-xdist's work stealing (`--dist worksteal`, setup.cfg) keeps
    both workers busy to the end: each worker starts on one half of this order and an idle one takes
    the end of the other's queue. First the files that read the session's training runs, so that one
    worker builds them at the start and the other never waits for them; then the files with the most
    slow or launcher tests; the quick in-process files last, the ones an idle worker takes. Each
    file's tests stay together (its module fixtures are built once) and in their order."""

    def heavy(item: pytest.Item) -> bool:
        return item.get_closest_marker("slow") is not None or any(n in item.fixturenames for n in LAUNCHER_RUNS)

    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)

    def rank(tests: list[pytest.Item]) -> tuple[bool, int]:
        reads_shared_runs = any(n in item.fixturenames for item in tests for n in SHARED_RUNS)
        return not reads_shared_runs, -sum(map(heavy, tests))

    items[:] = [item for tests in sorted(files.values(), key=rank) for item in tests]


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> pathlib.Path:
    """A folder of the whole test session, shared by pytest-xdist's workers (which run in parallel:
    build what they share with `support.launchers.shared_run`)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(session_dir) -> pathlib.Path:
    """JAX's persistent compilation cache for the whole session, shared by the xdist workers and the
    launcher subprocesses: tests that compile the same program (the same tiny model and step) load it."""
    folder = session_dir / "jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder


@pytest.fixture(scope="session")
def env(compilation_cache) -> dict[str, str]:
    """The environment of a short launcher run (`support.launchers.subprocess_env`): one device, the
    session's compilation cache."""
    return subprocess_env(compilation_cache)


@pytest.fixture(scope="session")
def long_run_env(compilation_cache) -> dict[str, str]:
    """The environment of a launcher run of hundreds of updates (LLVM's optimisation passes on)."""
    return subprocess_env(compilation_cache, long_run=True)


@pytest.fixture(scope="session")
def tiny_pretraining(session_dir, long_run_env) -> pathlib.Path:
    """The main command's run: 300 updates of the tiny pretraining config on the embedded corpus (one
    device, the launcher as users run it), run once per session; its workdir."""

    def build(workdir: pathlib.Path) -> None:
        args = ["--config=experiments/configs/pretrain.py:tiny", f"--workdir={workdir}", "--config.train.plot=False"]
        result = run("experiments.pretrain", [*args, "--config.train.log_every=50"], long_run_env)
        assert result.returncode == 0, result.stderr[-3000:]

    return shared_run(session_dir / "tiny_pretraining", build)


@pytest.fixture(scope="session")
def embedded_shards(session_dir) -> pathlib.Path:
    """Shard sets of the embedded corpus's train and valid manifests (`w2v-prepare-shards`, with their
    letter labels), made once per session: a folder holding `train/` and `valid/`."""

    def build(folder: pathlib.Path) -> None:
        for split in ("train", "valid"):
            prepare_shards(default_manifest(split), folder / split, shard_mb=1, labels=["ltr"])

    return shared_run(session_dir / "embedded_shards", build)


@pytest.fixture(scope="session")
def tiny_finetuning(session_dir, tiny_pretraining, long_run_env) -> pathlib.Path:
    """The tiny fine-tuning config with its defaults (300 updates) from `tiny_pretraining`: the model
    that has left CTC's all-blank plateau (valid CER about 0.64), run once per session; its workdir
    (checkpoints every 30 updates: tests/e2e/test_finetune.py resumes it from 270)."""

    def build(workdir: pathlib.Path) -> None:
        args = [
            f"--workdir={workdir}",
            "--config=experiments/configs/finetune.py:tiny",
            f"--config.init={tiny_pretraining}",
            "--config.train.checkpoint_every=30",
        ]
        result = run("experiments.finetune", args, long_run_env)
        assert result.returncode == 0, result.stderr[-3000:]

    return shared_run(session_dir / "tiny_finetuning", build)
