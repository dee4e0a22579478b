"""Every registered provider passes one conformance test for its kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evoens.config import ModelConfig
from evoens.population import Population
from evoens.testing import make_plugin_manager, run_inline, tiny_config, tiny_options

REGISTRY = make_plugin_manager(entry_points=True).registry  # the core and every installed plugin
CHECKED = {"fitness", "model", "dataset", "searcher", "trainer", "reporter", "activation", "optimizer"}
# Kinds whose conformance test lives beside the plugin that defines the kind's contract.
ELSEWHERE = {
    "strategy": "tests/test_population.py (parity of every strategy with the loop, values and gradients)",
    "benchmark": "tests/benchmarks/test_harness.py and each suite's quick-mode test in tests/benchmarks/",
    "grad_estimator": "tests/evoens_binary/test_binary_estimators.py::test_grad_estimator_provider_conformance",
    "mutation": "tests/evoens_morph/test_morph_widen.py (conformance over every registered mutation)",
    "weight_generator": "tests/evoens_hypernet/test_hypernet_search.py::test_weight_generator_provider_conformance",
}
NEEDS_FILES = {"mnist", "fashion_mnist", "cifar10", "cifar10_1"}  # covered by tests/test_data.py
IMAGE_MODELS = {"convnet", "binary_cnn", "interp_cnn"}


def _names(kind: str) -> list[str]:
    return REGISTRY.names(kind)


def test_every_kind_in_use_has_a_conformance_check() -> None:
    assert {p.kind for p in REGISTRY} <= CHECKED | set(ELSEWHERE)
    for where in ELSEWHERE.values():
        assert (Path(__file__).parent.parent / where.split("::")[0].split(" ")[0]).exists()


@pytest.mark.parametrize("name", _names("fitness"))
def test_fitness_shape_and_direction(name: str) -> None:
    fn = REGISTRY.create("fitness", name)
    y = torch.randint(0, 5, (32,))
    perfect = torch.nn.functional.one_hot(y, 5).float().mul(10).expand(3, -1, -1)  # (P, B, C)
    noise = torch.randn(3, 32, 5)
    if name == "neg_mse":
        perfect, y = noise.clone(), noise[0]
    fit_perfect, fit_noise = fn(perfect, y), fn(noise, y)
    assert fit_perfect.shape == (3,) and torch.isfinite(fit_noise).all()
    if getattr(fn, "couples_members", False):  # ensemble-level: judged relative to the others
        mixed = fn(torch.cat([perfect[:1], noise[1:]]), y)  # member 0 perfect among noise
        assert (mixed[0] >= mixed[1:] - 1e-6).all()
    else:
        assert (fit_perfect >= fit_noise).all()


@pytest.mark.parametrize("name", _names("model"))
def test_model_runs_batched_and_matches_the_loop(name: str) -> None:
    shape = (1, 28, 28) if name in IMAGE_MODELS else (64,)
    template = REGISTRY.create("model", name, shape, 10, ModelConfig())
    pop = Population.from_module(template, 3, generator=torch.Generator().manual_seed(0))
    x = torch.rand(5, *shape)
    out = pop(x)
    assert out.shape == (3, 5, 10)
    torch.testing.assert_close(out, pop(x, strategy="loop"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in _names("dataset") if n not in NEEDS_FILES])
def test_offline_dataset_splits(name: str, tmp_path: Path) -> None:
    from evoens.config import DataConfig

    data = REGISTRY.create("dataset", name, DataConfig(name=name, data_dir=str(tmp_path)), 0)
    for split in (data.train, data.val, data.test):
        assert split.x.shape[1:] == data.input_shape and split.y.dtype == torch.long
        assert int(split.y.max()) < data.num_classes
    assert len(data.train) > len(data.test) > 0


@pytest.mark.parametrize("name", _names("trainer"))
def test_trainer_runs_and_reports(name: str, tmp_path: Path) -> None:
    trainer = {"name": name, "options": tiny_options(REGISTRY, "trainer", name)}
    summary = run_inline(tiny_config(generations=2, trainer=trainer), tmp_path, entry_points=True)
    assert summary["generations"] == 2 and 0.0 <= summary["test_accuracy"] <= 1.0


@pytest.mark.parametrize("name", _names("reporter"))
def test_reporter_writes_and_closes(name: str, tmp_path: Path) -> None:
    summary = run_inline(tiny_config(generations=2, reporters=[name]), tmp_path)
    assert "reporter_errors" not in summary


def test_fitness_refuses_targets_that_would_broadcast() -> None:
    from evoens.fitness import neg_cross_entropy, neg_mse

    pred = torch.zeros(2, 5, 1)
    with pytest.raises(ValueError, match=r"targets of shape \(5,\) do not match"):
        neg_mse(pred, torch.zeros(5))  # (P, B, 1) - (B,) would be (P, B, B)
    assert neg_mse(pred, torch.ones(5, 1)).tolist() == [-1.0, -1.0]
    assert neg_mse(pred, torch.ones(2, 5, 1)).tolist() == [-1.0, -1.0]  # per-member targets
    with pytest.raises(ValueError, match="integer labels"):
        neg_cross_entropy(torch.zeros(2, 5, 3), torch.zeros(5, 1, dtype=torch.long))


@pytest.mark.parametrize("name", _names("activation"))
def test_activation_is_an_elementwise_module(name: str) -> None:
    act = REGISTRY.create("activation", name)
    x = torch.randn(4, 7)
    assert isinstance(act, torch.nn.Module) and act(x).shape == x.shape
    torch.testing.assert_close(act(x)[1:2], act(x[1:2]))  # no mixing between samples


@pytest.mark.parametrize("name", _names("optimizer"))
def test_optimizer_descends_a_quadratic(name: str) -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = REGISTRY.create("optimizer", name, [w], lr=0.1, weight_decay=0.0)
    start = float((w.detach() ** 2).sum())
    for _ in range(5):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < start
