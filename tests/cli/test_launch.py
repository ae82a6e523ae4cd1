"""What every launcher shares (`w2v_jax.cli`): quiet logging through the progress bar, the persistent
compilation cache, config paths resolved from the package, and an install that ships the library only."""

import configparser
import logging

import jax
import pytest
import setuptools
import tqdm

from tests.support import REPO
from tests.support.launchers import launcher_names
from w2v_jax import cli
from w2v_jax.cli import resolve_config_path
from w2v_jax.configs import PACKAGE_DIR


@pytest.fixture
def restore_loggers():
    names = ("absl", "jax", "orbax", "w2v_jax")
    saved = {
        n: (
            logging.getLogger(n).level,
            list(logging.getLogger(n).handlers),
            list(logging.getLogger(n).filters),
            logging.getLogger(n).propagate,
        )
        for n in names
    }
    yield
    for name, (level, handlers, filters, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:], logger.filters[:], logger.propagate = handlers, filters, propagate


def test_logging_is_quiet_and_keeps_the_progress_bar_whole(restore_loggers, capsys):
    cli.configure_logging()
    cli.configure_logging()  # idempotent: one handler, one copy of each filter
    assert all(logging.getLogger(n).level == logging.WARNING for n in ("absl", "jax", "orbax"))
    package = logging.getLogger("w2v_jax.trainer")
    assert len(logging.getLogger("w2v_jax").handlers) == 1
    with tqdm.tqdm(total=3, desc="pretrain", file=None) as bar:
        bar.update(1)
        package.info("compiling the train step (#%d)", 1)
        package.warning("SIGTERM: checkpoint %d saved, stopping", 3)
        logging.getLogger("absl").info("Saving item to /tmp/x")  # orbax's per-file INFO line
        logging.getLogger("absl").warning("Given directory is read only=/tmp/run/checkpoints")
    err = capsys.readouterr().err
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    assert any(line[8:] == " compiling the train step (#1)" and line[2] == line[5] == ":" for line in lines), lines
    assert any(line.endswith(" warning: SIGTERM: checkpoint 3 saved, stopping") for line in lines)
    assert "Saving item" not in err and "read only" not in err


def test_compilation_cache_is_on_unless_turned_off_and_the_environment_wins(monkeypatch, tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        assert cli.enable_compilation_cache(str(tmp_path / "cache")) == str(tmp_path / "cache")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert cli.enable_compilation_cache("") is None
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
        assert cli.enable_compilation_cache(str(tmp_path / "flag")) == str(tmp_path / "env")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")  # left to JAX's own setting
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_config_paths_resolve_from_the_package_in_any_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    packaged = str(PACKAGE_DIR / "pretrain.py")
    assert resolve_config_path("experiments/configs/pretrain.py:tiny") == packaged + ":tiny"
    assert resolve_config_path("pretrain:base") == packaged + ":base"
    assert resolve_config_path("codebook_ablation.py") == str(PACKAGE_DIR / "codebook_ablation.py")
    (tmp_path / "pretrain.py").write_text("")  # a file that exists is the user's choice
    assert resolve_config_path("pretrain.py:tiny") == "pretrain.py:tiny"
    assert resolve_config_path("nowhere.py:tiny") == "nowhere.py:tiny"  # config_flags names it
    assert resolve_config_path("__init__") == "__init__"


def test_install_ships_the_library_and_a_command_per_launcher():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    packages = setuptools.find_packages(REPO, include=cfg["options.packages.find"]["include"].split())
    assert {"w2v_jax", "w2v_jax.cli", "w2v_jax.configs"} <= set(packages)
    assert all(p == "w2v_jax" or p.startswith("w2v_jax.") for p in packages), packages  # no experiments, tools
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    launchers = launcher_names()
    assert sorted(scripts.values()) == sorted(f"w2v_jax.cli.{name}:run" for name in launchers)
    for name in launchers:  # each forwarder of the repository runs the packaged launcher
        assert f"from w2v_jax.cli.{name} import run" in (REPO / "experiments" / f"{name}.py").read_text()
    extras = {k: set(v.split()) for k, v in cfg["options.extras_require"].items()}
    assert extras["reference"] and extras["reference"] <= extras["test"]
