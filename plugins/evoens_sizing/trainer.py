"""Trainer ``sizing``: a population whose members learn their layers' sizes while they train.

G. Leclerc et al., "Smallify: Learning Network Size while Training" (arXiv:1806.03723, 2018): loss
``CE + lambda ||beta||_1 + lambda_2 ||W||^2``; the journal's flexible layer (``CE + lambda S(x0)``).

All P members share one architecture and one flat ``(P, D)`` leaf trained by one Adam (as
:mod:`evoens.gradient`): member i has its own switches (a fixed-shape mask per member, so members
of different effective sizes still run in one forward) and its own ``lambda_i`` (``lams`` cycled
over the members: a lambda sweep with replicates is one population). Every ``compact_every``
generations, when the widest member's live units fall below ``1 - compact_min`` of the physical
width, the population is compacted (:func:`evoens_sizing.compact.compact_population`, Adam's moments
cut alike); with ``grow_every`` it also grows (:mod:`evoens_sizing.grow`), but not before
``grow_delay`` generations (by default ``theta0 / lr``: before that no switch can have reached 0,
so every layer looks saturated). ``candidates()`` are the members compacted to their own live
units: one species per final width.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from evoens.candidates import Candidates
from evoens.config import option
from evoens.datasets import Batcher
from evoens.fitness import fitness_stats
from evoens.phases import Evaluate
from evoens.population import Population, flat_layout
from evoens_sizing.compact import SWITCHED, compact, compact_population, resized, unit_plan, widths
from evoens_sizing.gated import GatedLinear, gate_integral
from evoens_sizing.grow import grow_tensors, grow_zeros, growth
from evoens_sizing.models import sized_layers
from evoens_sizing.stats import ActivationProbe, UnitStats
from evoens_sizing.switch import SizePenaltyScheduler, SwitchLinear, switch_init_, switch_penalty, weight_penalty


@dataclass
class SizingOptions:
    """``[trainer.options]`` of ``sizing``."""

    lams: list[float] = option([1e-3], "lambda of the size penalty, cycled over the members", ge=0, finite=True)
    weight_l2: float = option(0.0, "lambda_2 of the weight term lambda_2 ||W||^2 (Smallify; the journal: 0)", ge=0)
    lr_x0: float = option(1.0, "learning rate of the gates' x0 (the journal's 1)", gt=0, finite=True)
    lam_decay: float = option(0.0, "a member collapsing to 0 units: lambda /= this, switches re-drawn (0: off)", ge=0)
    min_lam: float = option(1e-7, "the least lambda lam_decay goes to", ge=0)
    compact_every: int = option(0, "check for compaction every N generations (0: never during the run)", ge=0)
    compact_min: float = option(0.1, "compact when the live units of the widest member fall below (1 - this)",
                                ge=0, le=1)  # fmt: skip
    grow_every: int = option(0, "check for saturated layers to widen every N generations (0: never)", ge=0)
    grow_delay: int = option(-1, "growth checks act from this generation on (-1: ceil(theta0 / lr), the steps Adam "
                             "needs to take the smallest starting switch to 0)", ge=-1)  # fmt: skip
    grow_factor: float = option(2.0, "a saturated layer grows to about factor x its width", gt=1, finite=True)
    max_width: int = option(4096, "no layer grows past this many units", ge=2)
    probe_examples: int = option(1024, "training examples of the dead-unit probe", ge=1)
    dead_every: int = option(0, "report dead units (activation sd = 0 on the probe) every N generations (0: never)",
                             ge=0)  # fmt: skip

    @classmethod
    def tiny(cls) -> SizingOptions:
        """A run of seconds, for conformance tests."""
        return cls(lams=[1e-2, 0.0], compact_every=2, probe_examples=64)


def _as_dict(flat: Tensor, layout: list) -> dict[str, Tensor]:
    return {s.name: flat[:, s.offset : s.offset + s.numel].reshape(flat.shape[0], *s.shape) for s in layout}


def _as_flat(tensors: Mapping[str, Tensor], layout: list) -> Tensor:
    return torch.cat([tensors[s.name].reshape(tensors[s.name].shape[0], -1) for s in layout], 1)  # (P, D)


class SizingTrainer:
    """One generation = one Adam step of every member on one minibatch, then compaction/growth."""

    def __init__(self, template: nn.Module, popsize: int, options: SizingOptions, *, lr: float, batcher: Batcher,
                 device: torch.device, seed: int, weight_decay: float = 0.0, probe: Tensor | None = None,
                 strategy: str = "vmap") -> None:  # fmt: skip
        self.opts, self.lr, self.weight_decay, self.batcher = options, lr, weight_decay, batcher
        self.device, self.strategy, self.probe = device, strategy, probe
        for _, m in sized_layers(template):
            if isinstance(m, GatedLinear):  # x0 moves at lr_x0 under the one Adam (see GatedLinear)
                m.x0_scale = options.lr_x0 / lr
                m.reset_parameters()
        lam = torch.tensor([options.lams[i % len(options.lams)] for i in range(popsize)], dtype=torch.float32)
        self.schedule = SizePenaltyScheduler(lam, options.lam_decay, options.min_lam)
        generator = torch.Generator().manual_seed(seed)
        flat = Population.from_module(template, popsize, generator=generator).flat  # (P, D)
        self._build(template.to(device), flat.to(device))
        self.grow_generator = torch.Generator().manual_seed(seed + 1)
        self.useful_at_check = self.useful_units()  # (P,) per switch layer: what saturation compares with
        self.grow_after = self.start_delay()  # per switch layer: the first generation a growth check acts

    # ------------------------------------------------------------------ state
    def _build(self, template: nn.Module, flat: Tensor, moments: tuple[Tensor, Tensor, Tensor] | None = None,
               buffers: Mapping[str, Tensor] | None = None) -> None:  # fmt: skip
        """``buffers`` (name -> (P, ...)): per-member BatchNorm statistics, copied (train mode writes
        them in place); None: the template's."""
        leaf = flat.detach().clone().requires_grad_(True)
        self.template, self.layers = template, sized_layers(template)
        own = {k: v.clone(memory_format=torch.contiguous_format) for k, v in (buffers or {}).items()}
        self.population = Population(template, leaf, own or None, strategy=self.strategy)
        self.optimizer = torch.optim.Adam([leaf], lr=self.lr)
        if moments is not None:
            step, m1, m2 = moments
            self.optimizer.state[leaf] = {"step": step, "exp_avg": m1, "exp_avg_sq": m2}

    def _moments(self) -> tuple[Tensor, Tensor, Tensor] | None:
        st = self.optimizer.state.get(self.population.flat)
        return None if not st else (st["step"], st["exp_avg"], st["exp_avg_sq"])

    # ------------------------------------------------------------------ the loss
    def size_penalty(self, params: Mapping[str, Tensor]) -> Tensor:
        """Every member's size penalty: switches' L1 / gates' integrals summed over layers: (P,)."""
        total = torch.zeros(self.population.size, device=self.device)
        for name, m in self.layers:
            if isinstance(m, GatedLinear):
                total = total + gate_integral(params[f"{name}.x0_raw"] * m.x0_scale, float(m.k), m.out_features)
            else:
                total = total + switch_penalty(params[f"{name}.theta"], m.mode)
        return total  # (P,)

    def weight_terms(self, params: Mapping[str, Tensor]) -> Tensor:
        """``lambda_2 ||W||^2`` over weight matrices plus ``weight_decay / 2`` times the squares of
        every parameter but switches and x0 (Adam's coupled weight decay, size parameters spared): (P,)."""
        total = torch.zeros(self.population.size, device=self.device)
        for name, p in params.items():
            if name.endswith((".theta", ".x0_raw")):
                continue
            if self.opts.weight_l2 and name.endswith(".weight"):
                total = total + self.opts.weight_l2 * weight_penalty(p, lead=1)
            if self.weight_decay:
                total = total + 0.5 * self.weight_decay * weight_penalty(p, lead=1)
        return total

    def regularizer_grad(self) -> Tensor:
        """The gradient of ``sum_i lambda_i size_penalty_i + weight_terms_i`` w.r.t. the flat
        parameters, in closed form (equal to autograd's, tested): ``lambda [theta > 0]`` (strict) or
        ``lambda sign(theta)`` (l1) for switches, ``lambda s (g(0) - g(N))`` for a gate's stored x0,
        ``2 lambda_2 W`` and ``weight_decay p`` for the weight terms: (P, D)."""
        pop = self.population
        flat = pop.flat.detach()
        grad = torch.zeros_like(flat)  # (P, D)
        lam = self.schedule.lam.to(flat.device, flat.dtype)[:, None]  # (P, 1)
        modules = dict(self.layers)
        for slot in pop.layout:
            value = flat[:, slot.offset : slot.offset + slot.numel]  # (P, numel)
            out = grad[:, slot.offset : slot.offset + slot.numel]
            layer, _, attr = slot.name.rpartition(".")
            if attr == "theta" and layer in modules:
                mode = modules[layer].mode
                out += lam * ((value > 0).to(flat.dtype) if mode == "strict" else torch.sign(value))
            elif attr == "x0_raw" and layer in modules:
                m = modules[layer]
                x0 = value * m.x0_scale  # (P, 1)
                k = float(m.k)
                slope = torch.sigmoid(k * x0) - torch.sigmoid(k * (x0 - m.out_features))
                out += lam * m.x0_scale * slope
            else:
                if self.opts.weight_l2 and attr == "weight":
                    out += 2 * self.opts.weight_l2 * value
                if self.weight_decay:
                    out += self.weight_decay * value
        return grad

    def capacity(self) -> dict[str, Tensor]:
        """Per sized layer, every member's live units (switches) or effective size (gates): (P,)."""
        params = self.population.params
        found = {}
        for name, m in self.layers:
            if isinstance(m, GatedLinear):
                x0 = params[f"{name}.x0_raw"].detach() * m.x0_scale
                found[name] = x0.clamp(0, m.out_features)
            else:
                found[name] = (params[f"{name}.theta"].detach() > 0).sum(1).to(torch.float32)
        return found

    def _alive(self) -> dict[str, Tensor]:
        params = self.population.params
        return {n: params[f"{n}.theta"].detach() > 0 for n, m in self.layers if isinstance(m, SWITCHED)}

    # ------------------------------------------------------------------ a generation
    def step(self, generation: int, evaluate: Evaluate) -> dict[str, Any]:
        pop = self.population
        x, y = (t.to(pop.flat.device, non_blocking=True) for t in self.batcher.next())
        fitness, clean, _ = evaluate(Candidates([pop]), (x, y))  # (P,), differentiable
        finite = torch.isfinite(fitness)  # (P,)
        loss = -torch.where(finite, fitness, torch.zeros_like(fitness)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # the penalties' gradients in closed form: no (P, D) autograd views to add up
            pop.flat.grad += self.regularizer_grad()  # (P, D)
        self.optimizer.step()
        stats = self._stats(clean)
        if self.opts.dead_every and (generation + 1) % self.opts.dead_every == 0:
            for name, dead in self.dead_units().items():
                stats[f"dead/{name}"] = dead.sum(1).to(torch.float32).mean()
        self._maintain(generation + 1)
        return stats

    def _stats(self, clean: Tensor) -> dict[str, Any]:
        stats: dict[str, Any] = dict(fitness_stats(clean))
        caps = self.capacity()
        total = torch.stack(list(caps.values())).sum(0) if caps else torch.zeros(1)  # (P,)
        stats.update(capacity_mean=total.mean(), capacity_min=total.min(), capacity_max=total.max())
        for name, cap in caps.items():
            stats[f"capacity/{name}"] = cap.mean()
            for i, c in enumerate(cap.tolist()):
                stats[f"capacity/{name}/member{i}"] = c
        stats["lambda_mean"] = self.schedule.lam.mean()
        for path, w in self.physical_widths().items():
            stats[f"width/{path}"] = w
        return stats

    def physical_widths(self) -> dict[str, int]:
        try:
            return widths(self.template)
        except ValueError:
            return {n: m.out_features for n, m in self.layers}

    def _maintain(self, done: int) -> None:
        """After ``done`` generations: collapse handling, compaction and growth when due."""
        if self.opts.lam_decay:
            self._collapse()
        if self.opts.compact_every and done % self.opts.compact_every == 0:
            self.maybe_compact()
        if self.opts.grow_every and done % self.opts.grow_every == 0:
            self.maybe_grow(done)

    def _collapse(self) -> None:
        alive = self._alive()
        if not alive:
            return
        cap = torch.stack([a.sum(1) for a in alive.values()]).min(0).values  # (P,)
        collapsed = self.schedule.step(cap.cpu())
        if bool(collapsed.any()):
            with torch.no_grad():
                params = self.population.params
                for name, m in self.layers:
                    if isinstance(m, SWITCHED):
                        theta = params[f"{name}.theta"]  # (P, N) view of the leaf
                        fresh = switch_init_(torch.empty_like(theta), m.init, self.grow_generator)
                        theta.copy_(torch.where(collapsed.to(theta.device)[:, None], fresh, theta))

    # ------------------------------------------------------------------ compaction and growth
    def maybe_compact(self, force: bool = False) -> bool:
        """Compact when the widest member's live units are below (1 - compact_min) of a layer (switch
        Linears and Conv2ds; a SwitchConv2d's BatchNorm statistics are cut per member with its channels)."""
        alive = self._alive()
        if not alive:
            return False
        worth = any(a.sum(1).max() < (1 - self.opts.compact_min) * a.shape[1] for a in alive.values())
        if not (worth or force):
            return False
        layout = self.population.layout
        params = {k: v.detach() for k, v in self.population.params.items()}
        moments = self._moments()
        dicts = [params] + ([_as_dict(moments[1], layout), _as_dict(moments[2], layout)] if moments else [])
        buffers = dict(self.population.buffers)  # (P, ...) each, shared ones expanded: cut per member too
        template, cut = compact_population(self.template, dicts + ([buffers] if buffers else []), params)
        self._rebuild(template, cut[: len(dicts)], moments, cut[-1] if buffers else None)
        return True

    def _rebuild(self, template: nn.Module, cut: list[dict[str, Tensor]], moments: tuple | None,
                 buffers: Mapping[str, Tensor] | None) -> None:  # fmt: skip
        layout = flat_layout(template)
        new_moments = None if moments is None else (moments[0], _as_flat(cut[1], layout), _as_flat(cut[2], layout))
        self._build(template, _as_flat(cut[0], layout), new_moments, buffers)

    def dead_units(self) -> dict[str, Tensor]:
        """Per switch layer, every member's units with zero activation variance on the probe: (P, N)."""
        if self.probe is None:
            return {n: torch.zeros_like(a) for n, a in self._alive().items()}
        names = [n for n, _ in self.template.named_children()]
        pop = self.population
        params = {k: v.detach() for k, v in pop.params.items()}
        found = {}
        for name, m in self.layers:
            if isinstance(m, SwitchLinear):
                after = names[names.index(name) + 1]  # the ReLU after the layer
                acc = UnitStats()
                acc.update(ActivationProbe(self.template, after, "post").activations(params, pop.buffers, self.probe))
                found[name] = acc.result().dead
        return found

    def useful_units(self) -> dict[str, Tensor]:
        """Per switch Linear (the layers growth widens), every member's units with a live switch that
        are not dead on the probe: (P,)."""
        alive, dead, modules = self._alive(), self.dead_units(), dict(self.layers)
        return {name: (a & ~dead[name]).sum(1) for name, a in alive.items() if isinstance(modules[name], SwitchLinear)}

    def start_delay(self) -> dict[str, int]:
        """Per switch layer, the generations before its growth checks act: ``grow_delay``, or for -1
        ``ceil(theta0 / lr)`` with theta0 the smallest positive starting switch of any member (1 for
        ``init = "one"``). Adam moves a switch by about ``lr`` a step, so before that no unit can
        have been pruned and a check would find every layer saturated."""
        alive = self._alive()
        if self.opts.grow_delay >= 0:
            return {name: self.opts.grow_delay for name in alive}
        params = self.population.params
        found = {}
        for name in alive:
            theta = params[f"{name}.theta"].detach()
            live = theta[theta > 0]
            found[name] = math.ceil(float(live.min()) / self.lr) if live.numel() else 0
        return found

    def maybe_grow(self, done: int | None = None) -> bool:
        """Widen (R2R) every switch layer on which some member is saturated: no unit of it was pruned
        by its switch or died (activation sd 0 on the probe) since the last check, so it uses all it
        has. Units dead since the start do not block growth; compaction does not count. With
        ``done`` (generations trained), a layer inside its start-up delay (:meth:`start_delay`) is
        not grown; the check still records its units for the next one."""
        useful, alive = self.useful_units(), self._alive()
        grew = False
        for name, count in useful.items():
            if done is not None and done < self.grow_after.get(name, 0):
                continue  # no switch can have reached 0 yet: "saturated" would say nothing
            sat = count >= self.useful_at_check.get(name, count)  # (P,)
            live = alive[name].sum(1)
            n = growth(int(live.max()), self.opts.grow_factor, self.opts.max_width)
            n = min(n, (self.opts.max_width - alive[name].shape[1]) // 2 * 2)
            if bool(sat.any()) and n > 0:
                self._grow_layer(name, sat, n)
                grew = True
        self.useful_at_check = self.useful_units()
        return grew

    def _grow_layer(self, name: str, grow: Tensor, n: int) -> None:
        plan = {layer.path: layer for layer in unit_plan(self.template)}
        layer = plan[name]
        if not layer.consumer or layer.consumer[0][2] != 1:
            return
        layout = self.population.layout
        params = {k: v.detach() for k, v in self.population.params.items()}
        moments = self._moments()
        init = next(m for p, m in self.layers if p == name).init
        theta_new = 1.0 if init == "one" else 0.5
        grown = grow_tensors(params, layer, grow.to(params[f"{name}.theta"].device), n, theta_new,
                             self.grow_generator)  # fmt: skip
        cut = [grown] + ([grow_zeros(_as_dict(m, layout), layer, n) for m in moments[1:]] if moments else [])
        template = resized(self.template, list(plan.values()), {**widths(self.template), name: layer.width + n})
        self._rebuild(template, cut, moments, self.population.buffers)  # a Linear's growth leaves them as they are

    # ------------------------------------------------------------------ the contract
    def candidates(self) -> Candidates:
        """Every member compacted to its own live units (``member0`` ...): one species per width."""
        models = self.member_models()
        if any(isinstance(m, GatedLinear) for _, m in self.layers):
            return Candidates([self.population.with_flat(self.population.flat.detach())])
        return Candidates.from_modules([compact(m) for m in models], [f"member{i}" for i in range(len(models))],
                                       strategy="vmap")  # fmt: skip

    def member_models(self) -> list[nn.Module]:
        """Each member as its own module (eval mode) of the population's physical width."""
        pop, out = self.population, []
        for i in range(pop.size):
            m = copy.deepcopy(self.template)
            state = {k: v[i].detach() for k, v in pop.params.items()}
            state.update({k: v[i].detach() for k, v in pop.buffers.items()})
            m.load_state_dict(state)
            out.append(m.eval())
        return out

    def state_dict(self) -> dict[str, Any]:
        moments = self._moments()
        return {
            "widths": self.physical_widths(),
            "flat": self.population.flat.detach().clone(),
            "moments": None if moments is None else [t.clone() for t in moments],
            "lam": self.schedule.lam.clone(),
            "useful_at_check": {k: v.clone() for k, v in self.useful_at_check.items()},
            "grow_generator": self.grow_generator.get_state(),
            "buffers": {k: v.clone() for k, v in self.population.buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["widths"] != self.physical_widths():
            self.template = resized(self.template, unit_plan(self.template), state["widths"])
        moments = None if state["moments"] is None else tuple(t.to(self.device) for t in state["moments"])
        buffers = {k: v.to(self.device) for k, v in state.get("buffers", {}).items()}  # older checkpoints: none
        self._build(self.template, state["flat"].to(self.device), moments, buffers)  # type: ignore[arg-type]
        self.schedule.lam = state["lam"].clone()
        self.useful_at_check = {k: v.to(self.device) for k, v in state["useful_at_check"].items()}
        self.grow_generator.set_state(state["grow_generator"])
