"""The evoens_sizing plugin's hooks: the ``sizing_mlp`` model, the ``sizing`` trainer, the
``sizing_bmm`` forward strategy; during a sizing run with the ``tensorboard`` reporter, per-member
capacity and dead units per layer to ``DIR/sizing_tb``; after it, each member's size and accuracy
with the Pareto front across lambda in ``summary.json`` (and ``sizing_pareto.png``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from evoens import Provider, StashKey, hookimpl
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
    from evoens_sizing.models import sized_layers, with_switches
    from evoens_sizing.trainer import SizingTrainer

    template = run.template if sized_layers(run.template) else with_switches(run.template)
    if template is None:
        raise ConfigError(
            f"trainer 'sizing' needs switch or gated layers, or an MLP whose hidden Linears it can switch (each "
            f"followed by relu/tanh/gelu/identity), but model '{run.config.model.name}' has neither; "
            "use model.name = 'sizing_mlp'"
        )
    _check_options(options, template)
    t = run.config.trainer
    probe = run.data.train.x[: options.probe_examples]
    strategy = t.strategy
    if strategy == "auto":  # the batched GEMMs when this run registered them, else the generic vmap
        from evoens.strategies import STRATEGIES

        strategy = "sizing_bmm" if "sizing_bmm" in STRATEGIES else "vmap"
    return SizingTrainer(template, t.popsize, options, lr=t.lr, batcher=run.batcher, device=run.device,
                         seed=run.config.seed, weight_decay=t.weight_decay, probe=probe,
                         strategy=strategy)  # fmt: skip


def _check_options(options: Any, template: torch.nn.Module) -> None:
    """What the options dataclass cannot say alone, as one line each."""
    from evoens_sizing.compact import SWITCHED

    if not options.lams:
        raise ConfigError("trainer.options.lams = []: give at least one lambda (it is cycled over the members)")
    switches = any(isinstance(m, SWITCHED) for m in template.modules())
    for key in ("grow_every", "compact_every", "lam_decay"):
        if getattr(options, key) and not switches:
            raise ConfigError(f"trainer.options.{key} = {getattr(options, key)}: it acts on switch layers, and this "
                              "model has none (model.options.layer = 'switch')")  # fmt: skip


WRITER = StashKey[Any]()  # the run's CapacityWriter, when it has one


def _is_sizing(run: Any) -> bool:
    from evoens_sizing.trainer import SizingTrainer

    return isinstance(run.trainer, SizingTrainer)


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


@hookimpl
def evoens_report(run: Any, generation: int, stats: dict[str, Any]) -> None:
    """With the ``tensorboard`` reporter on, a sizing run also writes ``DIR/sizing_tb``: per layer one
    chart with every member's capacity, and the dead units when the trainer measured them."""
    if "tensorboard" not in run.config.reporters or not _is_sizing(run):
        return
    if WRITER not in run.stash:
        from evoens_sizing.report import CapacityWriter

        run.stash[WRITER] = CapacityWriter(run.out_dir / "sizing_tb", purge_step=generation or None)
    run.stash[WRITER].report(generation, stats)


@hookimpl
def evoens_run_end(run: Any) -> None:
    writer = run.stash.get(WRITER, None)
    if writer is not None:
        writer.close()


@hookimpl
def evoens_summary(run: Any) -> dict[str, Any] | None:
    trainer = run.trainer
    if not _is_sizing(run) or run.data.num_classes <= 0:
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
