"""The package's import graph read from its source (`ast`), as Python runs it: what importing a module
executes, lazy names (`w2v_jax.lazy_exports`) resolved only where a statement reads them.

A module's import runs its parent packages' `__init__` first, then its own module-level import
statements (those inside functions run later, if ever; those of a `lazy_exports` block never at
import). `from P import NAME` loads `P.NAME` when that is a module, and the module NAME comes from
when P exports it lazily. `static_closure(name)` is every package module reached that way.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import pathlib

from tests.support import REPO

PACKAGE = "w2v_jax"


@functools.cache
def package_modules() -> dict[str, pathlib.Path]:
    """Every module of the package (packages by their `__init__.py`), by dotted name."""
    modules = {}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if not all((REPO.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue  # a file in a folder that is no package (data files, scripts) is no module
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


@dataclasses.dataclass(frozen=True)
class ModuleImports:
    """A module's import statements: `eager`, those run when it is imported, as `(module, names)`
    (`names`: a from-import's names, None for `import module`); `lazy`, its lazy exports as
    `name -> (module, attribute)`; `defined`, the names its own statements bind at module level."""

    eager: tuple[tuple[str, tuple[str, ...] | None], ...]
    lazy: dict[str, tuple[str, str]]
    defined: frozenset[str]


def _is_lazy_block(node: ast.AST) -> bool:
    return isinstance(node, ast.With) and any(
        isinstance(item.context_expr, ast.Call)
        and isinstance(item.context_expr.func, ast.Name)
        and item.context_expr.func.id == "lazy_exports"
        for item in node.items
    )


def _is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`, which an import never runs."""
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _absolute(name: str, node: ast.ImportFrom) -> str:
    """The module a (possibly relative) from-import in module `name` names."""
    if not node.level:
        return node.module or ""
    is_package = package_modules()[name].name == "__init__.py"
    base = name.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache
def read_imports(name: str) -> ModuleImports:
    """`ModuleImports` of package module `name`, from its source."""
    tree = ast.parse(package_modules()[name].read_text(encoding="utf-8"))
    eager: list[tuple[str, tuple[str, ...] | None]] = []
    lazy: dict[str, tuple[str, str]] = {}
    defined: set[str] = set()

    def visit(body: list[ast.stmt], top: bool) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                eager.extend((alias.name, None) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                eager.append((_absolute(name, node), tuple(alias.name for alias in node.names)))
            elif _is_lazy_block(node):
                for statement in node.body:
                    assert isinstance(statement, ast.ImportFrom), f"{name}: a lazy block holds from-imports only"
                    for alias in statement.names:
                        lazy[alias.asname or alias.name] = (_absolute(name, statement), alias.name)
                continue
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if top:
                    defined.add(node.name)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, top=False)  # a class body runs at import
                continue
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and top:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined.update(t.id for t in targets if isinstance(t, ast.Name))
            if _is_main_guard(node):
                continue
            for field in ("body", "orelse", "finalbody"):
                visit(getattr(node, field, []), top)
            for handler in getattr(node, "handlers", []):
                visit(handler.body, top)

    visit(tree.body, top=True)
    return ModuleImports(tuple(eager), lazy, frozenset(defined))


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def lazy_source(package: str, attribute: str) -> str | None:
    """The package module that `from package import attribute` loads besides `package` itself: the
    submodule of that name, or the module a lazy export of that name comes from; None: neither."""
    modules = package_modules()
    if f"{package}.{attribute}" in modules:
        return f"{package}.{attribute}"
    export = read_imports(package).lazy.get(attribute) if package in modules else None
    if export is None:
        return None
    module, name = export
    return f"{module}.{name}" if module == package else module


def direct_targets(name: str) -> set[str]:
    """The package modules that module `name`'s own import statements load (each with its parents)."""
    targets: set[str] = set()
    for module, names in read_imports(name).eager:
        if module.split(".")[0] != PACKAGE:
            continue
        targets.add(module)
        for attribute in names or ():
            if (source := lazy_source(module, attribute)) is not None:
                targets.add(source)
    return {parent for target in targets for parent in _with_parents(target)}


@functools.cache
def static_closure(name: str) -> frozenset[str]:
    """Every package module that `import name` runs: its parents, its import statements' targets, and
    theirs in turn (a target that is no module of the package is an error of the source)."""
    seen: set[str] = set()
    stack = _with_parents(name)
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        assert module in package_modules(), f"{module}, imported in the package, is not one of its modules"
        seen.add(module)
        stack.extend(direct_targets(module) - seen)
    return frozenset(seen)


def third_party_imports(names: set[str] | frozenset[str]) -> set[tuple[str, tuple[str, ...] | None]]:
    """The import statements outside the package (the standard library included) that the package
    modules `names` run at import time, as `(module, names)` (`ModuleImports.eager`)."""
    return {
        (module, from_names)
        for name in names
        for module, from_names in read_imports(name).eager
        if module.split(".")[0] != PACKAGE
    }
