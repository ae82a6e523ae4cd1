"""w2v_jax/lazy_exports.py: every room's public names (`__all__`) resolve, each to the object its module
defines; a lazy block binds nothing, resolves a name when it is read, and refuses what it can't make lazy.
(That importing a room runs none of its lazy names: tests/test_imports.py.)"""

import builtins
import importlib
import json
import textwrap

import pytest

from tests.support.import_graph import package_modules, read_imports
from w2v_jax.data import manifest
from w2v_jax.lazy_exports import lazy_exports

ROOMS = sorted(name for name, path in package_modules().items() if path.name == "__init__.py")


def test_the_rooms_are_every_package():
    assert {"w2v_jax", "w2v_jax.asr", "w2v_jax.cli", "w2v_jax.data", "w2v_jax.training", "w2v_jax.research"} <= set(
        ROOMS
    )


@pytest.mark.parametrize("room", ROOMS)
def test_every_public_name_resolves_to_what_its_module_defines(room):
    module = importlib.import_module(room)
    declared = read_imports(room)
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    assert set(declared.lazy) <= set(module.__all__), "a lazy name left out of __all__"
    for name in module.__all__:
        if name in declared.lazy:
            source, attribute = declared.lazy[name]
            if source == room:  # a submodule
                expected = importlib.import_module(f"{room}.{attribute}")
            else:
                expected = getattr(importlib.import_module(source), attribute)
        else:
            assert name in declared.defined, f"{room}.{name} is declared public but neither defined nor exported"
            expected = vars(module)[name]
        assert getattr(module, name) is expected, f"{room}.{name}"
    assert set(module.__all__) <= set(dir(module))


def _room(source: str) -> dict:
    """The namespace of a module named `room` running `source` (a room's `__init__`)."""
    namespace = {"__name__": "room"}
    exec(compile(textwrap.dedent(source), "room/__init__.py", "exec"), namespace)
    return namespace


def test_a_lazy_name_is_resolved_when_read_and_then_kept():
    namespace = _room(
        """
        from w2v_jax.lazy_exports import lazy_exports

        with lazy_exports(globals()):
            from w2v_jax.data.manifest import load_manifest as read_it
            __import__("json")  # another import the block runs: not recorded
        """
    )
    assert "read_it" not in namespace
    assert "read_it" in namespace["__dir__"]()
    assert namespace["__getattr__"]("read_it") is manifest.load_manifest
    assert namespace["read_it"] is manifest.load_manifest  # kept: the module's attribute from now on
    with pytest.raises(AttributeError, match="module 'room' has no attribute 'load_manifest'"):
        namespace["__getattr__"]("load_manifest")


@pytest.mark.parametrize(
    "statement, error, message",
    [
        ("import json", ImportError, "a lazy export is `from package.module import name`, not `import json`"),
        ("from . import sibling", ImportError, r"not `from \. import sibling`"),
        ("from json import *", ImportError, r"not `from json import \*`"),
        ("value = 1", TypeError, "holds `from ... import ...` statements only; not 'value'"),
    ],
)
def test_a_lazy_block_refuses_what_it_cannot_make_lazy(statement, error, message):
    with pytest.raises(error, match=message):
        _room(
            f"""
            from w2v_jax.lazy_exports import lazy_exports

            with lazy_exports(globals()):
                {statement}
            """
        )


def test_one_lazy_block_per_module():
    with pytest.raises(RuntimeError, match="room defines __getattr__ already"):
        _room(
            """
            from w2v_jax.lazy_exports import lazy_exports

            with lazy_exports(globals()):
                from json import dumps
            with lazy_exports(globals()):
                from json import loads
            """
        )


def test_an_import_inside_a_block_may_name_the_builtins_parameters():
    # Another module (or thread) importing while a block runs passes through the block's hook, by
    # the builtin's parameter names too.
    namespace = {"__name__": "a_room"}
    with lazy_exports(namespace):
        module = builtins.__import__("json", globals={}, locals=None, fromlist=(), level=0)
    assert module is json
