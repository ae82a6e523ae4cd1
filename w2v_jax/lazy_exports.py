"""Lazy public names of a room (a sub-package): its `__init__` lists them as import statements, and
importing the room runs none of them.

    from w2v_jax.lazy_exports import lazy_exports

    with lazy_exports(globals()):
        from w2v_jax.data import pipeline
        from w2v_jax.data.manifest import Manifest, load_manifest

    __all__ = ["Manifest", "load_manifest", "pipeline"]

Inside the block, `from MODULE import NAME [as ALIAS]` imports nothing and binds nothing: it records
where the name comes from. The room's module `__getattr__` (PEP 562) imports MODULE the first time
the name is read (`w2v_jax.data.load_manifest`, `from w2v_jax.data import load_manifest`) and keeps
the value, so `import w2v_jax.data.manifest` runs the manifest module and what it imports, not the
rest of the room. `from ROOM import SUBMODULE`, the room's own name, exports a submodule.

Why import statements rather than a table of strings: type checkers, editors and import-linter read
them as the imports they are (import-linter counts the room as importing each name's module, which
is true the moment the name is used). `tests/test_imports.py` checks that every name of a room's
`__all__` resolves to what its module defines, and that importing any module loads no more than its
own import statements reach.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple


class _Export(NamedTuple):
    """A name of a lazy block: `from module import name`."""

    module: str
    name: str


class _Recorder(types.ModuleType):
    """The stand-in module `from MODULE import ...` gets inside a lazy block: each name read from it
    is an `_Export`."""

    def __getattr__(self, name: str) -> _Export:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Export(self.__name__, name)


# Held while a block swaps `builtins.__import__`: two rooms imported by two threads at once swap it in turn.
_SWAP = threading.Lock()


@contextlib.contextmanager
def lazy_exports(namespace: dict[str, Any]) -> Iterator[None]:
    """Makes the `from MODULE import NAME` statements of the block lazy names of the module whose
    `globals()` is `namespace` (a room's `__init__`): see the module docstring.

    Only the block's own statements are recorded (any other import, by another module or thread,
    runs as usual). Anything else in the block (`import x`, `from . import x`, `*`, an assignment) is
    an error, as is a block in a module that already defines `__getattr__`.
    """
    room = namespace["__name__"]
    if "__getattr__" in namespace:
        raise RuntimeError(f"{room} defines __getattr__ already: one lazy_exports block per module")
    before = set(namespace)
    with _SWAP:
        original = builtins.__import__

        def record(
            name: str,
            globals: Mapping[str, object] | None = None,
            locals: Mapping[str, object] | None = None,
            fromlist: Sequence[str] | None = (),
            level: int = 0,
        ) -> types.ModuleType:
            """`builtins.__import__` while the block runs, its parameters named as the builtin's (callers
            may pass them by name); `globals` is the importing module's."""
            if globals is not namespace:
                return original(name, globals, locals, fromlist, level)
            if level or not fromlist or "*" in fromlist:
                statement = f"from {'.' * level}{name} import {', '.join(fromlist)}" if fromlist else f"import {name}"
                raise ImportError(f"{room}: a lazy export is `from package.module import name`, not `{statement}`")
            return _Recorder(name)

        builtins.__import__ = record
        try:
            yield
        finally:
            builtins.__import__ = original
    exports: dict[str, _Export] = {}
    for key, value in list(namespace.items()):
        if isinstance(value, _Export):
            exports[key] = namespace.pop(key)
        elif key not in before:
            raise TypeError(f"{room}: a lazy_exports block holds `from ... import ...` statements only; not {key!r}")

    def __getattr__(name: str) -> Any:  # the module hooks of PEP 562
        export = exports.get(name)
        if export is None:
            raise AttributeError(f"module {room!r} has no attribute {name!r}")
        if export.module == room:  # `from ROOM import SUBMODULE`
            value = importlib.import_module(f"{room}.{export.name}")
        else:
            value = getattr(importlib.import_module(export.module), export.name)
        namespace[name] = value  # later reads find it without this hook
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    namespace["__getattr__"] = __getattr__
    namespace["__dir__"] = __dir__
