"""Public names: the provider naming rule, and what ``import evoens`` offers.

Provider names, of the core and every installed plugin, are snake_case; a parametrized family is
``family:variant`` (``ste:clipped``). A name from before the rule (kebab-case or dotted) is an
error that names its new spelling. The package exports the API a newcomer needs, loaded on first
use so that ``import evoens`` (which every plugin does, for ``hookimpl``) stays cheap.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import evoens
from evoens.errors import RegistryError
from evoens.testing import make_plugin_manager

REGISTRY = make_plugin_manager(entry_points=True).registry  # the core and every installed plugin
RULE = re.compile(r"^[a-z][a-z0-9_]*(:[a-z0-9_]+)?$")
#: (kind, old spelling, new name) of every provider renamed to follow the rule.
RENAMED = [
    ("dataset", "fashion-mnist", "fashion_mnist"),
    ("dataset", "cifar10.1", "cifar10_1"),
    ("grad_estimator", "nes-guided", "nes_guided"),
    ("grad_estimator", "nes-cv", "nes_cv"),
    ("grad_estimator", "ste-nes", "ste_nes"),
    ("trainer", "r2r-ne", "r2r_ne"),
    ("benchmark", "binary-estimators", "binary_estimators"),
    ("benchmark", "binary-mnist", "binary_mnist"),
    ("benchmark", "evojax-mnist", "evojax_mnist"),
]


@pytest.mark.parametrize("name", ["mnist", "r2r_ne", "ste:clipped", "cifar10_1", "net2net_widen"])
def test_the_rule_accepts(name: str) -> None:
    assert RULE.match(name)


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10.1", "R2R", "_private", "1st", "a:b:c", "ste:", "x y"])
def test_the_rule_rejects(name: str) -> None:
    assert not RULE.match(name)


def test_every_registered_name_follows_the_rule() -> None:
    bad = [f"{p.kind} '{p.name}' (plugin {p.plugin})" for p in REGISTRY if not RULE.match(p.name)]
    assert not bad, f"provider names must match {RULE.pattern}: {', '.join(bad)}"
    assert {p.kind for p in REGISTRY} >= {kind for kind, _, _ in RENAMED}  # the plugins below are installed


@pytest.mark.parametrize(("kind", "old", "new"), RENAMED)
def test_an_old_spelling_says_the_new_one(kind: str, old: str, new: str) -> None:
    assert REGISTRY.get(kind, new).name == new
    with pytest.raises(RegistryError, match=f"did you mean '{re.escape(new)}'"):
        REGISTRY.get(kind, old)


@pytest.mark.parametrize("name", REGISTRY.names("grad_estimator"))
def test_an_estimator_calls_itself_by_its_provider_name(name: str) -> None:
    assert REGISTRY.create("grad_estimator", name).name == name  # its error messages use this name


# --- the package's own names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", evoens.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    value = getattr(evoens, name)
    assert value is not None and name in dir(evoens)
    if name not in ("__version__", "hookimpl", "testing"):
        assert getattr(sys.modules[value.__module__], name) is value  # the defining module's object


def test_the_exports_cover_the_newcomers_api_and_star_import() -> None:
    wanted = {"hookimpl", "Provider", "Population", "Candidates", "Evaluation", "Run", "RunContext", "StashKey",
              "load_config", "create_plugin_manager", "execute", "__version__", "testing"}  # fmt: skip
    assert wanted <= set(evoens.__all__) and len(set(evoens.__all__)) == len(evoens.__all__)
    namespace: dict[str, object] = {}
    exec("from evoens import *", namespace)
    assert set(evoens.__all__) - {"__version__"} <= set(namespace)
    assert evoens.testing.make_plugin_manager is not None  # a submodule, reachable without its own import


def test_unknown_names_still_fail_and_submodules_still_import() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Provder'"):
        evoens.Provder
    from evoens import hookspecs  # a submodule not in __all__ falls through to the import system

    assert hookspecs.__name__ == "evoens.hookspecs"


@pytest.mark.parametrize("statement", ["import evoens", "from evoens import hookimpl, Provider"])
def test_importing_evoens_does_not_load_torch(statement: str) -> None:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    modules = set(json.loads(done.stdout))
    heavy = {"torch", "numpy", "evotorch", "evoens.run", "evoens.engine", "evoens.population", "evoens.testing"}
    assert not modules & heavy, sorted(modules & heavy)
    if statement == "import evoens":
        assert {m for m in modules if m.startswith("evoens.")} == set()  # pluggy and the package, nothing else
