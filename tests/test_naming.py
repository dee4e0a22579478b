"""One naming rule for provider names, applied to the core and every installed plugin.

Names are snake_case; a parametrized family is ``family:variant`` (``ste:clipped``). A name from
before the rule (kebab-case or dotted) is an error that names its new spelling.
"""

from __future__ import annotations

import re

import pytest

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
