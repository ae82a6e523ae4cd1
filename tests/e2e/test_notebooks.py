"""The notebooks are executed headlessly, so they can never rot."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support import REPO

NOTEBOOKS = REPO / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_executes(name, env, tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    # The kernel inherits this process's environment: a short launcher run's (one CPU device, no
    # display, the session's compilation cache): the notebooks' toy runs are mostly compilation.
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"
    ]
    assert not errors
    images = [
        o
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images, "the notebook's plots produced no figure"
