"""Python source that makes `import torch` / `import transformers` fail, as on the README's main-command
install (`pip install -e .`, no `reference` extra). Prepend it to a subprocess's `-c` program."""

import textwrap

BLOCK_REFERENCE = textwrap.dedent(
    """
    import importlib.abc, sys

    class _BlockReference(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("torch", "transformers"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: an install without torch)", name=name)
            return None

    sys.meta_path.insert(0, _BlockReference())
    """
)
