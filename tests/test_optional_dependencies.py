"""Every module of the package imports in one process, with torch and transformers missing too (an
install without the `reference` extra, simulated by an import hook): importing a module has no side
effect that stops another import. Using the PyTorch reference there raises an ImportError naming the
extra, while a pytorch_model.bin is read without torch (a damaged one is a ValueError, not a missing
extra); notebook 03's imports work."""

import json
import subprocess
import sys

import nbformat

from tests.support import HANG_TIMEOUT, REPO
from tests.support.imports import BLOCK_REFERENCE
from w2v_jax.reference import INSTALL_HINT

IMPORT_EVERYTHING = r"""
import importlib, json, pathlib, pkgutil, sys, tempfile
import w2v_jax

names = sorted(m.name for m in pkgutil.walk_packages(w2v_jax.__path__, "w2v_jax."))
errors = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as error:
        errors[name] = f"{type(error).__name__}: {error}"

NOTEBOOK_IMPORTS

def raised(use):
    try:
        use()
    except (ImportError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None

from w2v_jax.checkpoints import hf
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.research import torch_twin
folder = pathlib.Path(tempfile.mkdtemp())
(folder / "pytorch_model.bin").write_bytes(b"not read")
result = {
    "modules": names,
    "errors": errors,
    "bin_error": raised(lambda: hf.read_hf_state_dict(folder)),
    "twin_error": raised(lambda: torch_twin.hf_config(Wav2Vec2Config.preset("tiny"))),
    "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "transformers")),
}
print(json.dumps(result))
"""


def _notebook_imports(name: str) -> str:
    """Every top-level import statement of a notebook's code cells."""
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    lines = [
        line
        for cell in notebook.cells
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
        if line.startswith(("import ", "from "))
    ]
    return "\n".join(lines)


def test_every_module_imports_in_one_process_without_torch():
    program = BLOCK_REFERENCE + IMPORT_EVERYTHING.replace("NOTEBOOK_IMPORTS", _notebook_imports("03_pretraining.ipynb"))
    proc = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=HANG_TIMEOUT, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {
        "w2v_jax.training.trainer",
        "w2v_jax.representations",
        "w2v_jax.cli.pretrain",
        "w2v_jax.cli.sweep",
        "w2v_jax.research.torch_twin",
    } <= set(result["modules"])
    assert result["errors"] == {}
    assert (
        result["bin_error"].startswith("ValueError: ") and "pytorch_model.bin: not a zip archive" in result["bin_error"]
    )
    assert result["twin_error"].startswith("ImportError: ")
    assert INSTALL_HINT in result["twin_error"] and "torch_twin" in result["twin_error"]
    assert result["loaded"] == []


def test_the_notebook_guards_its_reference_cell():
    notebook = nbformat.read(REPO / "notebooks" / "03_pretraining.ipynb", as_version=4)
    uses = [cell.source for cell in notebook.cells if cell.cell_type == "code" and "compare." in cell.source]
    assert uses and all('find_spec("torch")' in source for source in uses)
