"""The evoens_hypernet plugin's hooks: the ``hypernet`` trainer, the ``vq`` and ``chunked`` weight
generators, the seed's ``vq_cnn`` model, and the summary's member and ensemble numbers (judged
with the ensemble plugin's metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from evoens import Provider, hookimpl
from evoens.config import ConfigError, option

#: the ensemble of the summary: every member's probabilities averaged, as in the original
COMBINER = "mean_prob"


@dataclass
class VQOptions:
    """``[trainer.options.generator_options]`` of ``vq`` (:mod:`evoens_hypernet.refiner`)."""

    stages: int = option(40, "T: refinement stages (a code has T choices)", ge=1)
    options: int = option(4, "K: proposals per stage (the ensemble holds K^T members)", ge=1)
    hidden: int = option(512, "H: the refiner's width (its output layer has H*K*D weights)", ge=1)
    refiner: str = option("mlp", "'mlp', 'mlp_large' (+2 layers) or 'bias' (the NO_NN ablation)",
                          choices=("mlp", "mlp_large", "bias"))  # fmt: skip
    output_scale: float = option(0.1, "initial sigma_t of every stage", gt=0, finite=True)
    path: str = option("auto", "decode u_T in the refiner's hidden space ('hidden'), stage by stage ('stages') or "
                       "whichever costs less ('auto')", choices=("auto", "hidden", "stages"))  # fmt: skip
    checkpoint: bool = option(False, "stage by stage: recompute each stage in the backward pass (T inputs kept, "
                              "not T stages; measured slower and no smaller on a CPU)")  # fmt: skip

    @classmethod
    def tiny(cls) -> VQOptions:
        return cls(stages=3, hidden=16)


@dataclass
class ChunkedOptions:
    """``[trainer.options.generator_options]`` of ``chunked`` (:mod:`evoens_hypernet.chunked`)."""

    noise_dim: int = option(32, "E: the code's (noise or embedding) dimension", ge=1)
    hidden: int = option(128, "the trunk's and head's width", ge=1)
    chunk: int = option(2048, "C: weights emitted per head call", ge=1)
    chunk_embedding: int = option(32, "E_c: the learned embedding of each chunk", ge=1)
    embedding: str = option("noise", "'noise' (z ~ N(0, I)) or 'learned' (M member embeddings)",
                            choices=("noise", "learned"))  # fmt: skip
    members: int = option(16, "M: learned embeddings (embedding = 'learned')", ge=1)

    @classmethod
    def tiny(cls) -> ChunkedOptions:
        return cls(noise_dim=4, hidden=8, chunk=64, chunk_embedding=4)


@dataclass
class VQCNNOptions:
    """``[model.options]`` of ``vq_cnn`` (:mod:`evoens_hypernet.models`)."""

    channels: int = option(32, "channels of both conv layers", ge=1)
    hidden: int = option(32, "width of the hidden dense layer", ge=1)
    dropout: float = option(0.0, "Dropout before each Linear (the seed's dropout baseline: 0.25)", ge=0, lt=1)


def _vq_cnn(input_shape: tuple[int, ...], num_outputs: int, cfg: Any) -> torch.nn.Module:
    from evoens_hypernet.models import vq_cnn

    o = VQCNNOptions(**cfg.options)
    try:
        return vq_cnn(input_shape, num_outputs, channels=o.channels, hidden=o.hidden, dropout=o.dropout)
    except ValueError as err:
        raise ConfigError(f"model 'vq_cnn': {err}; use an image dataset such as mnist or digits") from None


KNOBS = {
    "vq": "lower hidden, stages or options, or use generator = 'chunked' (its size does not grow with D*H*K)",
    "chunked": "lower hidden or chunk",
}


def _build(kind: str, space: Any, options: Any, batch: int) -> tuple[Any, Any, dict[str, Any]]:
    """The generator class of ``kind``, its memory estimate for ``batch`` members, its keywords."""
    from evoens_hypernet.chunked import ChunkedHypernet
    from evoens_hypernet.refiner import VQRefiner

    kw = asdict(options)
    if kind == "chunked":
        return ChunkedHypernet, ChunkedHypernet.estimate(space.dim, **kw, batch=batch), kw
    kw["use_checkpoint"] = kw.pop("checkpoint")
    estimate = VQRefiner.estimate(space.dim, stages=options.stages, options=options.options, hidden=options.hidden,
                                  refiner=options.refiner, batch=batch, use_checkpoint=options.checkpoint,
                                  path=options.path)  # fmt: skip
    return VQRefiner, estimate, kw


def _generator(kind: str) -> Any:
    """The factory of weight generator ``kind``: checks memory first, builds it seeded by the run."""

    def factory(context: Any, options: Any) -> Any:
        from evoens_hypernet.generator import GeneratorTooLarge, check_memory
        from evoens_hypernet.space import WeightSpace

        try:
            space = WeightSpace(context.template)
        except ValueError as err:
            raise ConfigError(f"weight generator '{kind}': {err}") from None
        t = context.config.trainer
        cls, estimate, kw = _build(kind, space, options, t.popsize)
        try:
            check_memory(kind, estimate, context.device, f"set trainer.options.generator_options: {KNOBS[kind]}")
        except GeneratorTooLarge as err:
            raise ConfigError(str(err)) from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.config.seed)
            return cls(space, **kw, strategy=t.strategy, max_chunk=t.max_chunk)

    return factory


def _hypernet_trainer(context: Any, options: Any) -> Any:
    from evoens_hypernet.meta import MetaTerms
    from evoens_hypernet.trainer import HypernetTrainer

    registry, t = context.registry, context.config.trainer
    key = "trainer.options.generator_options"
    gen_options = registry.options("weight_generator", options.generator, options.generator_options, key)
    generator = registry.create("weight_generator", options.generator, context, gen_options)
    optimizer = registry.create("optimizer", t.optimizer, generator.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    terms = MetaTerms(options.objective, options.inner_lr, options.ensemble_nll, options.diversity)
    return HypernetTrainer(
        generator, optimizer, context.batcher, terms, meta_batch=t.popsize, ensemble=options.ensemble,
        seed=context.config.seed, eval_batch=options.eval_batch,
    )  # fmt: skip


@hookimpl
def evoens_register_providers() -> Iterator[Provider]:
    from evoens_hypernet.trainer import HypernetOptions

    yield Provider("trainer", "hypernet", _hypernet_trainer, "a weight generator trained by meta-steps on its members",
                   options=HypernetOptions)  # fmt: skip
    yield Provider("weight_generator", "vq", _generator("vq"), "vq-ensemble's refiner: codes of T choices among K",
                   options=VQOptions)  # fmt: skip
    yield Provider("weight_generator", "chunked", _generator("chunked"),
                   "a chunked hypernetwork from noise or learned embeddings", options=ChunkedOptions)  # fmt: skip
    yield Provider("model", "vq_cnn", _vq_cnn, "vq-ensemble's MNIST CNN (60,106 parameters)", options=VQCNNOptions)


@hookimpl
def evoens_summary(run: Any) -> dict[str, Any] | None:
    """Member-mean and ensemble accuracy, NLL and ECE of the E judged members on val and test,
    and the generator's output variance (4 sampled members, as the original measures it)."""
    from evoens_hypernet.trainer import HypernetTrainer

    trainer = run.trainer
    if not isinstance(trainer, HypernetTrainer) or run.data.num_classes <= 0:
        return None
    from evoens_ensemble.judge import split_metrics

    candidates = trainer.candidates()
    entry: dict[str, Any] = {"members": len(candidates), "combiner": COMBINER}
    for name, split in (("val", run.data.val), ("test", run.data.test)):
        if len(split.y):
            m = split_metrics(candidates, split, COMBINER)
            entry[name] = {
                "ensemble_accuracy": float(m["accuracy"]), "member_accuracy_mean": float(m["member_accuracy"].mean()),
                "ensemble_nll": float(m["nll"]), "member_nll_mean": float(m["member_nll"].mean()),
                "ensemble_ece": float(m["ece"]),
            }  # fmt: skip
    entry["output_variance"] = float(trainer.generator.diversity(4, torch.Generator().manual_seed(run.config.seed + 3)))
    entry["generator_parameters"] = trainer.generator.num_parameters
    return {"hypernet": entry}
