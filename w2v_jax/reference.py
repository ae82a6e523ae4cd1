"""The optional PyTorch reference: torch and transformers are imported only where they are used.

They come with the `reference` extra (`pip install -e '.[reference]'`, also part of `test`):
`research.torch_twin` / `research.compare` (w2v-compare-pytorch), benchmark's
`--vs_pytorch`, and writing fairseq `.pt` checkpoints. Everything else, training and reading
`pytorch_model.bin` or `.pt` files included (`checkpoints.torch_files`), runs on the main install.
Every module imports without them (`LazyReference`); using the reference without them raises an
ImportError that names the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install -e '.[reference]'"


def import_reference(name: str, needed_for: str) -> ModuleType:
    """Imports `name` ("torch" or "transformers"), or raises an ImportError naming the extra.

    Args:
      name: the module to import.
      needed_for: what needs it, for the message (e.g. "w2v-benchmark --vs_pytorch").
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(
            f"{needed_for} needs {name} (the PyTorch reference, not installed): {INSTALL_HINT}"
        ) from error


class LazyReference(ModuleType):
    """`torch` or `transformers`, imported on first attribute access (`import_reference`): a module
    that holds the PyTorch reference imports without it, and says which extra is missing when used."""

    def __init__(self, name: str, needed_for: str):
        super().__init__(name)
        self._needed_for = needed_for

    def __getattr__(self, attribute: str):
        module = import_reference(self.__name__, self._needed_for)
        return getattr(module, attribute)
