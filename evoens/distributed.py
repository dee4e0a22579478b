"""Scale-out on Ray: EvoTorch's ``EvaluationActor`` holds a copy of the population problem and
evaluates a share of every generation, on this machine or across a cluster (``[ray]`` config,
``evoens run --ray-address``).

What runs where. The main process samples (the searcher), runs ``evoens_after_ask`` before and
``evoens_after_evaluate`` after the remote evaluation (without outputs: they stay in the
actors), and updates the searcher. Each actor imports the same plugins as the main process
(the entry points it loaded, same versions, and the *source* of every ``--plugins-dir`` file,
shipped with the actor) and runs ``evoens_evaluate`` and the configured fitness provider itself,
so the fitness is exactly what the user configured. A plugin missing on a worker is one line
naming it and the node. Plugins that take part in evaluation must be importable there (entry
point or ``--plugins-dir``, not registered from code), and a plugin implementing
``evoens_evaluate`` must declare ``EVOENS_ACTOR_SAFE = True`` (its ``run`` argument inside an
actor is an :class:`ActorRun`: config, device, template, fitness_fn, registry; no data, trainer
or stash); a fitness that couples the members cannot be split over actors. Otherwise the run
refuses actors with one line naming the plugin and why; never a silent substitution.

Resources: each actor asks Ray for ``threads_per_actor`` CPUs and uses as many torch threads
(default: the cluster's CPUs / actors, so actors x threads <= cores), and
``num_gpus_per_actor`` GPUs. Evaluation inside an actor is chunked as in the main process.

Faults: an actor whose process dies mid-generation is replaced and its share re-evaluated (the
evaluation is deterministic, so the generation's result is unchanged), up to
``ray.max_restarts`` per run; past that, or when an actor does not start within
``ray.start_timeout`` or return its share within ``ray.timeout`` seconds, the run stops with one
line (a :class:`~evoens.errors.RunError`, exit 1); the newest checkpoint resumes it. The actors
draw nothing from the main process's random streams, so an actor run equals the same run without
Ray (CPU, fixed forward strategy) and resumes exactly.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
import types
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch

from evoens.errors import ConfigError, PluginError, RunError, UserError
from evoens.manager import GROUP, LOCAL

if TYPE_CHECKING:
    from evoens.config import RayConfig
    from evoens.evolution import PopulationProblem
    from evoens.run import Run, RunContext

log = logging.getLogger("evoens")

ACTOR_SAFE = "EVOENS_ACTOR_SAFE"
"""The attribute (module or plugin object) by which a plugin says its ``evoens_evaluate`` needs
nothing of ``run`` but what an :class:`ActorRun` holds."""


class WorkerSetupError(Exception):
    """A Ray worker cannot build the main process's plugins (raised inside the actor)."""


def require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise UserError(
            f"trainer.num_actors > 0 needs Ray ({exc}); install it with `pip install 'evoens[ray]'` "
            "or set trainer.num_actors = 0"
        ) from None
    return ray


def connect(address: str | None) -> Any:
    """Join the cluster at ``address`` ('auto' as Ray defines it), or start/join the default one
    (``RAY_ADDRESS`` or a local instance). Already connected: that connection is used."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address and address != "auto" and "://" not in address:
        _probe(address)  # Ray itself retries an unreachable address for minutes
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, configure_logging=False)  # fmt: skip
    except Exception as exc:  # ConnectionError, an authentication error, a version mismatch, ...
        first = " ".join(str(exc).split())[:200]
        raise UserError(
            f"ray.address = {address!r}: cannot join a Ray cluster ({type(exc).__name__}: {first}); "
            "start one with `ray start --head` or check the address"
        ) from None
    return ray


def _probe(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address = {address!r}: expected HOST:PORT (the head's port, 6379 by default) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(
            f"ray.address = {address!r}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
            f"`ray start --head --port {port}` or check the address"
        ) from None


# --- What the actors must import --------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """The main process's plugins, in registration order, as an actor rebuilds them: each is
    ``("entry_point", name, distribution, version)``, ``("module", name, module)`` (a module
    registered from code, imported by name) or ``("local", name, path, source)`` (a
    --plugins-dir file). Plugin objects registered from code stay in the main process."""

    plugins: tuple[tuple[str, ...], ...]
    fitness: str
    threads: int
    gpus: float | str
    seed: int


def _how_to_import(run: Run | RunContext, name: str, plugin: object) -> tuple[str, ...] | None:
    info = run.pm.infos.get(name)
    if info is not None and info.version == LOCAL and info.dist:
        with open(info.dist, encoding="utf-8") as fh:
            return ("local", name, info.dist, fh.read())
    if info is not None and info.dist:
        return ("entry_point", name, info.dist, info.version or "")
    module = getattr(plugin, "__name__", None) if isinstance(plugin, types.ModuleType) else None
    if module and module != "__main__" and importlib.util.find_spec(module) is not None:
        return ("module", name, module)
    return None


def _shippable(run: Run | RunContext, plugin: str) -> str | None:
    """Why ``plugin`` cannot be imported in an actor, or None."""
    if _how_to_import(run, plugin, run.pm.get_plugin(plugin)) is None:
        return (
            "it is an object registered from code, and Ray actors import only entry-point, --plugins-dir "
            "and importable module plugins; package it as one"
        )
    return None


def refusal(run: RunContext) -> str | None:
    """One line naming the first plugin that cannot take part in an actor evaluation, or None."""
    n = run.config.trainer.num_actors
    fix = f"or run without actors (trainer.num_actors = 0, now {n!r})"
    name = run.config.trainer.fitness
    provider = run.registry.get("fitness", name)
    if getattr(run.fitness_fn, "couples_members", False):
        return (
            f"fitness {name!r} (plugin '{provider.plugin}') couples the members (couples_members = True): "
            f"split over Ray actors each share would be judged without the rest of the population; {fix}"
        )
    if why := _shippable(run, provider.plugin):
        return f"fitness {name!r} comes from plugin '{provider.plugin}', which cannot run in Ray actors: {why}, {fix}"
    for impl in run.pm.hook.evoens_evaluate.get_hookimpls():
        plugin = impl.plugin_name
        if plugin == "core":
            continue
        if why := _shippable(run, plugin):
            return f"plugin '{plugin}' implements evoens_evaluate, which runs in the Ray actors, but {why}, {fix}"
        if getattr(impl.plugin, ACTOR_SAFE, False) is not True:
            return (
                f"plugin '{plugin}' implements evoens_evaluate, which runs in the Ray actors, where `run` holds "
                f"only config, device, template, fitness_fn and registry (no data, trainer or stash); it does not "
                f"declare {ACTOR_SAFE} = True (declare it if it needs nothing else), {fix}"
            )
    return None


def manifest_of(run: Run, threads: int, gpus: float | str) -> Manifest:
    plugins = []
    for name, plugin in run.pm.list_name_plugin():
        how = _how_to_import(run, name, plugin) if plugin is not None else None
        if how is not None:
            plugins.append(how)
    return Manifest(tuple(plugins), run.config.trainer.fitness, threads, gpus, run.config.seed)


# --- Inside an actor ----------------------------------------------------------------------------


class ActorRun:
    """The ``run`` an ``evoens_evaluate`` implementation receives inside a Ray actor."""

    def __init__(self, config: Any, pm: Any, device: torch.device, template: Any, fitness_fn: Any) -> None:
        self.config, self.pm, self.device, self.template, self.fitness_fn = config, pm, device, template, fitness_fn

    @property
    def hook(self) -> Any:
        return self.pm.hook

    @property
    def registry(self) -> Any:
        return self.pm.registry

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"run.{name} is not available inside a Ray actor (there: config, device, template, fitness_fn, "
            "registry, pm, hook)"
        )


def _node() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # pragma: no cover - outside Ray
        return "?"


def _load(how: tuple[str, ...], here: dict[str, Any]) -> object:
    kind, name = how[0], how[1]
    if kind == "entry_point":
        dist, version = how[2], how[3]
        ep = here.get(name)
        found = getattr(getattr(ep, "dist", None), "version", None)
        if ep is None or (found is not None and version and found != version):
            has = "is not installed" if ep is None else f"has version {found}"
            raise WorkerSetupError(
                f"plugin '{name}' ({dist} {version}) {has} on the Ray worker at {_node()}: install the same "
                "plugins on every node of the cluster, or disable it with -p no:NAME"
            )
        return ep.load()
    if kind == "module":
        return importlib.import_module(how[2])
    path, source = how[2], how[3]
    module = types.ModuleType(f"evoens_local_{name}")
    module.__file__ = path
    exec(compile(source, path, "exec"), module.__dict__)  # the main process's source: same code everywhere
    return module


def build_actor_plugins(manifest: Manifest) -> Any:
    """The plugin manager of an actor: the main process's plugins, in its order."""
    from evoens.manager import create_plugin_manager

    here = {ep.name: ep for ep in metadata.entry_points(group=GROUP)}
    plugins = []
    for how in manifest.plugins:
        try:
            plugins.append((how[1], _load(how, here)))
        except WorkerSetupError:
            raise
        except (Exception, SystemExit) as exc:
            origin = f"--plugins-dir {how[2]}" if how[0] == "local" else how[2]
            raise WorkerSetupError(
                f"plugin '{how[1]}' ({origin}) fails to import on the Ray worker at {_node()}: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            ) from None
    try:
        return create_plugin_manager(plugins=plugins, entry_points=False, env={})
    except UserError as exc:
        raise WorkerSetupError(f"the plugins do not load on the Ray worker at {_node()}: {exc}") from None


@dataclass
class ActorSide:
    """What :meth:`PopulationProblem.setup_actor` builds inside an actor."""

    pm: Any
    run: ActorRun
    device: torch.device


def setup_actor(problem: PopulationProblem, manifest: Manifest, config: Any) -> str:
    """Inside a fresh actor: threads, device, plugins and the fitness function. Returns the node."""
    if manifest.threads:
        torch.set_num_threads(manifest.threads)
    if manifest.gpus == "all":
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    wants_gpu = manifest.gpus == "all" or (isinstance(manifest.gpus, (int, float)) and manifest.gpus > 0)
    if wants_gpu and not torch.cuda.is_available():
        raise WorkerSetupError(
            f"ray.num_gpus_per_actor = {manifest.gpus!r}, but torch on the Ray worker at {_node()} sees no CUDA "
            "device (a CPU-only torch there?)"
        )
    device = torch.device("cuda" if wants_gpu else "cpu")
    pm = build_actor_plugins(manifest)
    fitness_fn = pm.registry.create("fitness", manifest.fitness)
    problem.fitness_fn = fitness_fn
    problem.template = problem.template.to(device)
    problem.remote.actor = ActorSide(pm, ActorRun(config, pm, device, problem.template, fitness_fn), device)
    return _node()


# --- In the main process: the actors of one run -----------------------------------------------


@dataclass
class Timing:
    """Seconds of the remote part of the generations so far (for the scaling suite)."""

    generations: int = 0
    remote: float = 0.0  # wall time from dispatch to the last share back
    compute: float = 0.0  # the slowest actor's own evaluation time, summed over generations
    history: list[tuple[float, float]] = field(default_factory=list)  # (remote, compute) per generation


class ActorPool:
    """``n`` EvoTorch ``EvaluationActor``s holding copies of ``problem``; each generation's
    solutions are split into ``n`` contiguous shares, one per actor."""

    def __init__(self, problem: PopulationProblem, n: int, manifest: Manifest, settings: RayConfig, config: Any):
        self.ray = require_ray()
        self.problem, self.n, self.manifest, self.settings, self.config = problem, n, manifest, settings, config
        self.restarts = 0
        self.timing = Timing()
        self.nodes: list[str] = []
        self.actors: list[Any] = [self._spawn(i) for i in range(n)]
        self.nodes = [self._ready(i) for i in range(n)]

    def _options(self) -> dict[str, Any]:
        gpus = self.manifest.gpus
        options: dict[str, Any] = {"num_cpus": self.manifest.threads, "max_restarts": 0}
        options["scheduling_strategy"] = "SPREAD"  # one actor per node first: a cluster's machines all work
        if isinstance(gpus, (int, float)) and gpus > 0:
            options["num_gpus"] = gpus
        return options

    def _spawn(self, i: int) -> Any:
        from evotorch.core import EvaluationActor

        seeds = tuple((self.manifest.seed * 7919 + 4 * i + k) % 2**32 for k in range(4))  # not the main RNG's
        return EvaluationActor.options(**self._options()).remote(self.problem, i, seeds, {})

    def _ready(self, i: int) -> str:
        """Set actor ``i`` up and wait for it: a plugin missing there is one line, never a hang."""
        ref = self.actors[i].call.remote("setup_actor", [self.manifest, self.config], {})
        try:
            return self.ray.get(ref, timeout=self.settings.start_timeout)
        except self.ray.exceptions.GetTimeoutError:
            self.close()
            raise RunError(
                f"Ray actor {i} did not start within ray.start_timeout = {self.settings.start_timeout:g} s: the "
                f"cluster has {self._free()} free, each actor asks for {self._options()}; lower trainer.num_actors or "
                "ray.threads_per_actor, or add a node"
            ) from None
        except self.ray.exceptions.RayError as exc:
            self.close()
            cause = getattr(exc, "cause", None)
            if isinstance(cause, WorkerSetupError):
                raise PluginError(str(cause)) from None
            raise RunError(f"Ray actor {i} failed to start: {_one_line(exc)}") from None

    def _free(self) -> str:
        try:
            free = self.ray.available_resources()
            return ", ".join(f"{free.get(k, 0):g} {k}" for k in ("CPU", "GPU"))
        except Exception:  # pragma: no cover
            return "unknown resources"

    def evaluate(self, values: torch.Tensor, batch: Any, generation: int) -> torch.Tensor:
        """The ``(N,)`` fitness of the ``(N, D)`` solutions, evaluated by the actors."""
        ray = self.ray
        started = time.perf_counter()
        shares = torch.arange(values.shape[0]).tensor_split(self.n)
        host = values.detach().to("cpu")
        batch_ref = ray.put(tuple(t.to("cpu") for t in batch))
        pending: dict[Any, tuple[int, int]] = {}
        for i, rows in enumerate(shares):
            if len(rows):
                pending[self._submit(i, host[rows[0] : rows[-1] + 1], batch_ref, generation)] = (i, i)
        results: dict[int, torch.Tensor] = {}
        compute = 0.0
        deadline = time.monotonic() + self.settings.timeout
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                self.close()
                raise RunError(
                    f"generation {generation}: no answer from Ray actor(s) {sorted(s for _, s in pending.values())} "
                    f"within ray.timeout = {self.settings.timeout:g} s; the run stopped (resume it from its newest "
                    "checkpoint with `evoens resume DIR`)"
                )
            ref = ready[0]
            share, slot = pending.pop(ref)
            try:
                fitness, seconds = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                rows = shares[share]
                pending[self._replace(slot, generation, exc, host[rows[0] : rows[-1] + 1], batch_ref)] = (share, slot)
                deadline = time.monotonic() + self.settings.timeout
                continue
            except ray.exceptions.RayTaskError as exc:
                self.close()
                cause = getattr(exc, "cause", None)
                if isinstance(cause, (UserError, RunError)):
                    raise cause from None
                raise PluginError(
                    f"generation {generation}: the evaluation failed in Ray actor {slot} ({self.nodes[slot]}): "
                    f"{_one_line(cause if cause is not None else exc)}"
                ) from None
            results[share] = fitness
            compute = max(compute, seconds)
        remote = time.perf_counter() - started
        self.timing.generations += 1
        self.timing.remote += remote
        self.timing.compute += compute
        self.timing.history.append((remote, compute))
        return torch.cat([results[i] for i in sorted(results)]).to(values.device)

    def _submit(self, slot: int, values: torch.Tensor, batch_ref: Any, generation: int) -> Any:
        return self.actors[slot].call.remote("evaluate_share", [values, batch_ref, generation], {})

    def _replace(self, slot: int, generation: int, exc: Exception, values: torch.Tensor, batch_ref: Any) -> Any:
        """A new actor in ``slot``, set up, with the dead one's share resubmitted."""
        self.restarts += 1
        if self.restarts > self.settings.max_restarts:
            self.close()
            raise RunError(
                f"generation {generation}: Ray actor {slot} ({self.nodes[slot]}) died ({_one_line(exc)[:160]}) and "
                f"ray.max_restarts = {self.settings.max_restarts} replacements are used up; the run stopped "
                "(resume it from its newest checkpoint with `evoens resume DIR`)"
            )
        log.warning("generation %d: Ray actor %d (%s) died; replaced (%d of ray.max_restarts = %d), its %d "
                    "solutions are evaluated again", generation, slot, self.nodes[slot], self.restarts,
                    self.settings.max_restarts, values.shape[0])  # fmt: skip
        self.actors[slot] = self._spawn(slot)
        self.nodes[slot] = self._ready(slot)
        return self._submit(slot, values, batch_ref, generation)

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


_OPEN: list[ActorPool] = []  # the pools of this process: a new run closes the previous run's actors


def last_pool() -> ActorPool | None:
    """The newest actor pool of this process (closed or not): its timing, for the scaling suite."""
    return _OPEN[-1] if _OPEN else None


def resolve_actors(ray: Any, wanted: int | str, device: torch.device, settings: RayConfig) -> tuple[int, int, Any]:
    """The number of actors, threads each, and GPUs each, checked against the cluster."""
    total = ray.cluster_resources()
    cpus, gpus = int(total.get("CPU", 0)), float(total.get("GPU", 0))
    if device.type != "cpu":
        raise ConfigError(
            f"device = {device.type!r} with trainer.num_actors = {wanted!r}: the main process of an actor run "
            "keeps the population on the CPU (EvoTorch); set device = 'cpu' and give the actors GPUs with "
            "ray.num_gpus_per_actor"
        )
    if wanted in ("max", "num_cpus"):
        n = cpus
    elif wanted in ("num_gpus", "num_devices"):
        n = int(gpus) if gpus >= 1 else (cpus if wanted == "num_devices" else 0)
        if n == 0:
            raise ConfigError(f"trainer.num_actors = {wanted!r}, but the Ray cluster has no GPU")
    else:
        n = int(wanted)
    threads = settings.threads_per_actor or max(1, cpus // max(n, 1))
    if n < 1 or n * threads > cpus:
        raise ConfigError(
            f"trainer.num_actors = {wanted!r} -> {n} actor(s) x {threads} thread(s) each, but the Ray cluster has "
            f"{cpus} CPU(s): lower trainer.num_actors or ray.threads_per_actor, or add a node"
        )
    per_gpu: Any = settings.num_gpus_per_actor
    if wanted in ("num_gpus", "num_devices") and gpus >= 1:
        per_gpu = per_gpu or 1.0
    if per_gpu == "max":
        per_gpu = gpus / n if gpus else 0.0
    if isinstance(per_gpu, (int, float)) and per_gpu * n > gpus + 1e-9:
        raise ConfigError(
            f"ray.num_gpus_per_actor = {settings.num_gpus_per_actor!r} x {n} actor(s), but the Ray cluster has "
            f"{gpus:g} GPU(s)"
        )
    return n, threads, per_gpu


def preflight(context: RunContext) -> None:
    """While the run is built, before its directory exists: refuse in one line a plugin that cannot
    run in the actors, a missing Ray, an address where no cluster answers, or more actors x threads
    than the cluster has (connecting, or starting the local instance, that the run then uses)."""
    why = refusal(context)
    if why:
        raise PluginError(why)
    settings = context.config.ray
    resolve_actors(connect(settings.address), context.config.trainer.num_actors, context.device, settings)


def start(problem: PopulationProblem, run: Run) -> ActorPool:
    """Start the actors (the first generation); :func:`preflight` checked them while the run was built."""
    settings = run.config.ray
    ray = connect(settings.address)
    n, threads, gpus = resolve_actors(ray, problem.remote.wanted, run.device, settings)
    while _OPEN:
        _OPEN.pop().close()
    pool = ActorPool(problem, n, manifest_of(run, threads, gpus), settings, run.config)
    _OPEN.append(pool)
    log.info("evaluating on %d Ray actor(s) x %d thread(s): %s", n, threads, ", ".join(pool.nodes))
    return pool
