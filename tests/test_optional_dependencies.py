"""torch and transformers are optional: on an install without them (simulated by an import hook)
every module imports except the PyTorch reference's, which raise an ImportError naming the extra;
notebook 03's imports work; reading a pytorch_model.bin says what to install."""

import json
import pathlib
import subprocess
import sys

import nbformat
from without_reference import BLOCK_REFERENCE

from w2v_jax.reference import INSTALL_HINT

REPO = pathlib.Path(__file__).resolve().parents[1]
# The modules of the PyTorch reference (and the launcher that needs it).
REFERENCE_MODULES = {"w2v_jax.research.torch_twin", "w2v_jax.research.compare", "w2v_jax.cli.compare_pytorch"}

IMPORT_EVERYTHING = BLOCK_REFERENCE + r"""
import importlib, json, pathlib, pkgutil, sys, tempfile
from absl import flags
import w2v_jax

names = sorted(m.name for m in pkgutil.walk_packages(w2v_jax.__path__, "w2v_jax."))
errors = {}
for name in names:
    sys.argv = ["prog"]  # launchers read their config flag's overrides from sys.argv at import
    try:
        importlib.import_module(name)
    except ImportError as error:
        errors[name] = str(error)
    for flag in list(flags.FLAGS.flags_by_module_dict().get(name, [])):  # launchers share flag names
        delattr(flags.FLAGS, flag.name)

NOTEBOOK_IMPORTS

from w2v_jax import convert
folder = pathlib.Path(tempfile.mkdtemp())
(folder / "pytorch_model.bin").write_bytes(b"not read")
try:
    convert.read_hf_state_dict(folder)
    bin_error = None
except ImportError as error:
    bin_error = str(error)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "transformers"))
print(json.dumps({"modules": names, "errors": errors, "bin_error": bin_error, "loaded": loaded}))
"""


def _notebook_imports(name: str) -> str:
    """Every top-level import statement of a notebook's code cells."""
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    lines = [
        line for cell in notebook.cells if cell.cell_type == "code" for line in cell.source.splitlines()
        if line.startswith(("import ", "from "))
    ]
    return "\n".join(lines)


def test_everything_but_the_reference_imports_without_torch():
    program = IMPORT_EVERYTHING.replace(
        "NOTEBOOK_IMPORTS", _notebook_imports("03_pretraining.ipynb")
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"w2v_jax.trainer", "w2v_jax.features", "w2v_jax.cli.pretrain", "w2v_jax.research.sweep"} <= set(
        result["modules"]
    )
    assert set(result["errors"]) == REFERENCE_MODULES, result["errors"]
    for message in result["errors"].values():
        assert INSTALL_HINT in message and "torch" in message
    assert INSTALL_HINT in result["bin_error"] and "pytorch_model.bin" in result["bin_error"]
    assert result["loaded"] == []


def test_the_notebook_guards_its_reference_cell():
    notebook = nbformat.read(REPO / "notebooks" / "03_pretraining.ipynb", as_version=4)
    uses = [cell.source for cell in notebook.cells if cell.cell_type == "code" and "compare." in cell.source]
    assert uses and all('find_spec("torch")' in source for source in uses)
