"""The evoens_sizing plugin's hooks: the ``sizing_mlp`` model, the ``sizing`` trainer, the
``sizing`` reporter (per-member capacity to tensorboardX), and, after a sizing run, each member's
size and accuracy with the Pareto front across lambda in ``summary.json`` (and ``sizing_pareto.png``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from evoens import Provider, hookimpl
from evoens.config import ConfigError, option


@dataclass
class SizingModelOptions:
    """``[model.options]`` of ``sizing_mlp``."""

    layer: str = option("switch", "hidden layers: per-unit switches, a sigmoid gate, or plain (the static baseline)",
                        choices=("switch", "gated", "plain"))  # fmt: skip
    mode: str = option("strict", "switch penalty: strict (sum relu(theta); dead stays dead) or l1 (sum |theta|)",
                       choices=("strict", "l1"))  # fmt: skip
    init: str = option("one", "switch init: one (the journal), uniform (SysML, in (0, 1]), normal (NIPS draft)",
                       choices=("one", "uniform", "normal"))  # fmt: skip
    k: float = option(0.4, "gate slope (fixed; the journal's HEAD: 0.4)", gt=0, finite=True)
    x0: float = option(-1.0, "gates' starting size x0 (-1: the layer's width)", finite=True)


def _sizing_mlp(input_shape: tuple[int, ...], num_outputs: int, cfg: Any) -> torch.nn.Module:
    from evoens_sizing.models import sizing_mlp

    o = SizingModelOptions(**cfg.options)
    try:
        return sizing_mlp(input_shape, num_outputs, list(cfg.hidden), layer=o.layer, mode=o.mode, init=o.init, k=o.k,
                          x0=None if o.x0 < 0 else o.x0, activation=cfg.activation)  # fmt: skip
    except ValueError as err:
        raise ConfigError(f"model 'sizing_mlp': {err}") from None


def _sizing_trainer(run: Any, options: Any) -> Any:
    from evoens_sizing.models import sized_layers
    from evoens_sizing.trainer import SizingTrainer

    if not sized_layers(run.template):
        raise ConfigError(
            f"trainer 'sizing' needs switch or gated layers, but model '{run.config.model.name}' has none; "
            "use model.name = 'sizing_mlp'"
        )
    t = run.config.trainer
    probe = run.data.train.x[: options.probe_examples]
    strategy = t.strategy
    if strategy == "auto":  # the batched GEMMs when this run registered them, else the generic vmap
        from evoens.strategies import STRATEGIES

        strategy = "sizing_bmm" if "sizing_bmm" in STRATEGIES else "vmap"
    return SizingTrainer(run.template, t.popsize, options, lr=t.lr, batcher=run.batcher, device=run.device,
                         seed=run.config.seed, weight_decay=t.weight_decay, probe=probe,
                         strategy=strategy)  # fmt: skip


class _CapacityReporter:
    def __init__(self, run: Any) -> None:
        from evoens_sizing.report import CapacityWriter

        self.writer = CapacityWriter(run.out_dir / "sizing_tb")

    def report(self, generation: int, stats: dict[str, Any]) -> None:
        self.writer.report(generation, stats)

    def close(self) -> None:
        self.writer.close()


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    from evoens_sizing.trainer import SizingOptions

    yield Provider("model", "sizing_mlp", _sizing_mlp, "MLP with switch / gated / plain hidden layers (Smallify)",
                   options=SizingModelOptions)  # fmt: skip
    yield Provider("trainer", "sizing", _sizing_trainer,
                   "a population learning its layer sizes: switches (L1) or gates, compaction, R2R growth",
                   options=SizingOptions)  # fmt: skip
    from evoens_sizing.strategy import SizingBMM

    yield Provider("strategy", "sizing_bmm", SizingBMM, "switch / gated / plain MLP populations as batched GEMMs")
    yield Provider("reporter", "sizing", _CapacityReporter, "per-member capacity and dead units per layer (tb)")


@hookimpl
def evoens_summary(run: Any) -> dict[str, Any] | None:
    from evoens_sizing.trainer import SizingTrainer

    trainer = run.trainer
    if not isinstance(trainer, SizingTrainer) or run.data.num_classes <= 0:
        return None
    from evoens.run import split_accuracy
    from evoens_sizing.report import pareto_front, pareto_plot

    candidates = trainer.candidates()
    judge = run.data.val if len(run.data.val.y) else run.data.train
    val = split_accuracy(candidates.logits, judge).tolist()  # (P,)
    test = split_accuracy(candidates.logits, run.data.test).tolist()
    sizes = torch.stack(list(trainer.capacity().values())).sum(0).tolist()
    lams = trainer.schedule.lam.tolist()
    rows = [{"member": n, "lam": lam, "size": s, "val_accuracy": v, "test_accuracy": a, "accuracy": a}
            for n, lam, s, v, a in zip(candidates.names, lams, sizes, val, test)]  # fmt: skip
    front = pareto_front([(r["size"], r["val_accuracy"]) for r in rows])
    try:
        pareto_plot(rows, run.out_dir / "sizing_pareto.png", "sizing: live units vs test accuracy")
    except OSError:
        pass
    for r in rows:
        r.pop("accuracy")
    return {"sizing": {"members": rows, "pareto": [rows[i]["member"] for i in front],
                       "widths": trainer.physical_widths()}}  # fmt: skip
