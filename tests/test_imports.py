"""An import runs what it names: importing any module of the package loads exactly the package modules
its own import statements reach (`support.import_graph.static_closure`: its parents, its module-level
imports and theirs, a room's lazy names only where a statement reads them), nothing more, and a
package's `__init__` imports nothing of the package but the lazy-names helper; so the seed modules
load only the model-layer modules they build on, and none of the heavy libraries of the rooms above
them (checkpointing, input pipeline, logging, plotting) beyond what their own imports bring.

The modules load in one interpreter, one after another, isolated from each other: before each one every
module of the package is dropped from `sys.modules`, so it runs again from its own import. The seeds'
third-party modules are counted in fresh interpreters.
"""

import concurrent.futures
import json
import subprocess
import sys

from tests.support import HANG_TIMEOUT, REPO
from tests.support.import_graph import (
    PACKAGE,
    direct_targets,
    package_modules,
    read_imports,
    static_closure,
    third_party_imports,
)

SEEDS = ("w2v_jax.feature_encoder", "w2v_jax.quantization", "w2v_jax.contrastive_loss")
# The seeds' package modules: themselves, the package root and the lazy-names helper its `__init__`
# uses (the contrastive loss builds on the quantizer's code perplexity).
SEED_MODULES = {
    "w2v_jax.feature_encoder": {"w2v_jax", "w2v_jax.lazy_exports", "w2v_jax.feature_encoder"},
    "w2v_jax.quantization": {"w2v_jax", "w2v_jax.lazy_exports", "w2v_jax.quantization"},
    "w2v_jax.contrastive_loss": {"w2v_jax", "w2v_jax.lazy_exports", "w2v_jax.quantization", "w2v_jax.contrastive_loss"},
}
# What the rooms above the model layer bring: checkpoints, the input pipeline, the optimizer, metric logs, plots.
HEAVY = ("orbax", "grain", "optax", "tensorboardX", "matplotlib")

IMPORT_EACH_ALONE = r"""
import importlib, json, sys

def package_modules():
    return sorted(m for m in sys.modules if m == "w2v_jax" or m.startswith("w2v_jax."))

loaded = {}
for name in json.loads(sys.argv[1]):
    for module in package_modules():
        del sys.modules[module]
    importlib.import_module(name)
    loaded[name] = package_modules()
print(json.dumps(loaded))
"""

LOADED_MODULES = r"""
import json, sys
for module, names in json.loads(sys.argv[1]):
    __import__(module, fromlist=names or ())  # what `import module` / `from module import names` runs
print(json.dumps(sorted(sys.modules)))
"""


def _run(program: str, names) -> object:
    """`program` in a fresh interpreter from the repository root, with `names` as its argument; its JSON."""
    proc = subprocess.run(
        [sys.executable, "-c", program, json.dumps(sorted(names, key=str))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _top_level(modules) -> set[str]:
    return {m.partition(".")[0] for m in modules}


def test_every_module_loads_exactly_what_its_imports_reach():
    names = sorted(package_modules())
    assert {"w2v_jax", "w2v_jax.feature_encoder", "w2v_jax.cli.transcribe", "w2v_jax.data.pipeline"} <= set(names)
    loaded = _run(IMPORT_EACH_ALONE, names)
    wrong = {
        name: {
            "unexpected": sorted(set(got) - static_closure(name)),
            "missing": sorted(static_closure(name) - set(got)),
        }
        for name, got in loaded.items()
        if set(got) != static_closure(name)
    }
    assert wrong == {}


def test_package_inits_import_nothing_of_the_package_but_the_lazy_names_helper():
    inits = sorted(name for name, path in package_modules().items() if path.name == "__init__.py")
    assert {"w2v_jax", "w2v_jax.data", "w2v_jax.cli", "w2v_jax.checkpoints", "w2v_jax.configs"} <= set(inits)
    eager = {name: sorted(direct_targets(name) - {PACKAGE, "w2v_jax.lazy_exports"}) for name in inits}
    assert eager == {name: [] for name in inits}


def test_the_package_imports_a_lazy_name_from_the_module_that_defines_it():
    """Inside the package, `from ROOM import name` names the room's own names and submodules only, so
    the graph import-linter reads holds the modules each module uses, not every name of its rooms."""
    modules = package_modules()
    through_rooms = [
        (name, room, attribute)
        for name in modules
        for room, attributes in read_imports(name).eager
        if room in modules and modules[room].name == "__init__.py"
        for attribute in attributes or ()
        if read_imports(room).lazy.get(attribute, (room,))[0] != room
    ]
    assert through_rooms == []


def test_seed_modules_load_the_model_layer_they_build_on_and_no_heavy_library():
    programs = {seed: (LOADED_MODULES, [(seed, None)]) for seed in SEEDS}
    # The third-party modules the seeds' own import statements name, imported alone: what they load
    # (flax.nnx imports optax itself) is what a seed may load.
    own_imports = set().union(*(third_party_imports(static_closure(seed)) for seed in SEEDS))
    programs["own imports"] = (LOADED_MODULES, sorted(own_imports))
    with concurrent.futures.ThreadPoolExecutor(len(programs)) as pool:
        futures = {key: pool.submit(_run, program, names) for key, (program, names) in programs.items()}
        loaded = {key: set(future.result()) for key, future in futures.items()}
    allowed = loaded.pop("own imports")
    for seed, modules in loaded.items():
        package = {m for m in modules if _top_level([m]) == {PACKAGE}}
        assert package == SEED_MODULES[seed] == static_closure(seed), seed
        assert modules - package <= allowed, (seed, sorted(modules - package - allowed))
        assert not _top_level(modules) & (set(HEAVY) - _top_level(allowed)), seed
    # Of the heavy libraries only optax comes with the seeds' own imports: flax.nnx imports it (flax/nnx/helpers.py).
    assert _top_level(allowed) & set(HEAVY) <= {"optax"}
