"""The plugin manager: the contract, the installed plugins, and the checks between them.

Plugins are found through the entry-point group ``evoens`` (built-ins included, exactly like a
third-party package), plus optional ``*.py`` files of a ``--plugins-dir`` and objects passed in
by code. Each is validated before it is registered, so a misspelled hook or an argument the
contract does not have fails at start-up with one line naming the plugin. A plugin that fails to
import is reported and skipped (unless required). ``-p no:NAME`` or ``EVOENS_DISABLE_PLUGINS``
block plugins by name (a name that no plugin has is an error listing the known ones);
``EVOENS_TRACE_PLUGINS=1`` prints one short line per hook call to stderr. With ``lenient=True``
(``evoens plugins``, the suite listing of ``evoens bench``) a plugin that breaks the contract is
reported beside the others instead of stopping the command.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from evoens import hookspecs
from evoens.errors import PluginError, UserError, did_you_mean
from evoens.registry import Provider, Registry, require_provider

GROUP = "evoens"
DISABLE_ENV = "EVOENS_DISABLE_PLUGINS"
TRACE_ENV = "EVOENS_TRACE_PLUGINS"
PREFIX = "evoens_"
LOCAL = "local"  # the version shown for a --plugins-dir file (its distribution is the file's path)

log = logging.getLogger("evoens")


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from; ``error`` is set for one that could not be loaded."""

    name: str
    dist: str | None = None
    version: str | None = None
    error: str | None = None
    traceback: str | None = None  # of an import failure; shown with --debug

    @property
    def label(self) -> str:
        origin = f" ({self.dist} {self.version})" if self.dist else ""
        return f"plugin '{self.name}'{origin}"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with evoens's conventions: unmarked ``evoens_*`` functions are hookimpls
    (as pytest does for ``pytest_*``), and every registration is validated first."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginInfo] = []
        self._registry: Registry | None = None
        self._report_failures: dict[str, str] = {}  # plugin name -> its report hook's first error

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(PREFIX) and inspect.isroutine(getattr(plugin, name, None)):
            opts = {}  # pluggy fills in the defaults
        return opts

    def register(self, plugin: object, name: str | None = None, info: PluginInfo | None = None) -> str | None:
        name = name or self.get_canonical_name(plugin)
        info = info or PluginInfo(name)
        problem = _validate(self, plugin)
        if problem:
            raise PluginError(f"{info.label}: {problem}")
        registered = super().register(plugin, name)
        if registered is not None:
            self.infos[registered] = info
            self._registry = None
            self._adapt_impls(plugin, registered)
        return registered

    def _adapt_impls(self, plugin: object, name: str) -> None:
        """Give two hooks their evoens semantics while pluggy still calls them (so ``tryfirst``,
        ``trylast``, wrappers, tracing and monitoring apply as to every hook): a failing
        ``evoens_report`` costs only its own output, and ``evoens_register_providers`` tags each
        provider with the plugin that registered it."""
        adapters = {"evoens_report": self._isolated_report, "evoens_register_providers": _tagged_providers}
        for caller in self.get_hookcallers(plugin) or []:
            adapt = adapters.get(caller.name)
            for impl in caller.get_hookimpls() if adapt else ():
                if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                    impl.function = adapt(impl.function, name)

    def _isolated_report(self, function: Any, plugin_name: str) -> Any:
        def report(*args: Any) -> None:
            if plugin_name in self._report_failures:
                return None  # reported once; its output is off for the rest of the run
            try:
                return function(*args)
            except Exception as exc:  # a broken report hook must not cost the user their run
                self._report_failures[plugin_name] = f"{plugin_name}: {exc!r}"
                log.warning("plugin '%s' failed in evoens_report: %r; its reports are off, the run goes on",
                            plugin_name, exc)  # fmt: skip
                return None

        return report

    def report_errors(self) -> list[str]:
        """One line per plugin whose ``evoens_report`` raised (for ``summary.json``)."""
        return list(self._report_failures.values())

    @property
    def registry(self) -> Registry:
        """All providers of all registered plugins (built lazily, rebuilt after a registration)."""
        if self._registry is None:
            self._registry = build_registry(self)
        return self._registry


def _impl_argnames(function: Any) -> list[str]:
    """Arguments a hookimpl asks for: those without defaults (pluggy's rule), minus self."""
    params = inspect.signature(function).parameters.values()
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name != "self"
    ]


def _validate(pm: PluginManager, plugin: object) -> str | None:
    """One line describing the first contract violation of ``plugin``, or None."""
    known = [n for n in dir(pm.hook) if n.startswith(PREFIX)]
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            continue
        hookname = opts.get("specname") or attr
        caller = getattr(pm.hook, hookname, None)
        spec = getattr(caller, "spec", None)
        if spec is None:
            if opts.get("optionalhook") or not hookname.startswith(PREFIX):
                continue
            close = difflib.get_close_matches(hookname, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; see evoens/hookspecs.py"
            return f"unknown hook '{hookname}'{hint}"
        extra = [a for a in _impl_argnames(getattr(plugin, attr)) if a not in spec.argnames]
        if extra:
            allowed = ", ".join(spec.argnames) or "none"
            return f"hook '{hookname}' asks for unknown argument(s) {', '.join(extra)}; it accepts: {allowed}"
    return None


def blocked_names(disable: Iterable[str] = (), env: Mapping[str, str] | None = None) -> set[str]:
    """Names from ``-p no:NAME`` style options plus the ``EVOENS_DISABLE_PLUGINS`` list."""
    env = os.environ if env is None else env
    names = {n.removeprefix("no:").strip() for n in disable}
    names |= {n.strip() for n in env.get(DISABLE_ENV, "").split(",")}
    return {n for n in names if n}


def _entry_points() -> list[metadata.EntryPoint]:
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUP):
        seen.setdefault(ep.name, ep)  # the same dist visible twice on sys.path: first wins
    return list(seen.values())


def _ep_info(ep: metadata.EntryPoint, error: str | None = None) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    name = dist.metadata["Name"] if dist is not None else None
    return PluginInfo(ep.name, name, dist.version if dist is not None else None, error)


def _fail(pm: PluginManager, info: PluginInfo, required: bool) -> None:
    message = f"{info.label} failed to load: {info.error}"
    if required:
        raise PluginError(message)
    pm.failures.append(info)
    log.warning("%s; skipped (it stays off until fixed)", message)
    if info.traceback:
        log.info("traceback of %s:\n%s", info.label, info.traceback.rstrip())  # shown with --debug


def _import_error(exc: BaseException) -> tuple[str, str]:
    """The one-line error and the traceback of a plugin's import that raised (or called sys.exit)."""
    text = f"SystemExit({exc.code!r}) at import" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
    return text, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _register(pm: PluginManager, plugin: object, info: PluginInfo, required: bool, lenient: bool) -> None:
    try:
        pm.register(plugin, info.name, info)
    except PluginError as exc:
        if not lenient or required:
            raise
        pm.failures.append(replace(info, error=str(exc).removeprefix(f"{info.label}: ")))


def _load_entry_points(pm: PluginManager, blocked: set[str], require: set[str], lenient: bool) -> None:
    for ep in _entry_points():
        if ep.name in blocked or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # a broken third-party plugin must not take the toolkit down
            error, tb = _import_error(exc)
            _fail(pm, replace(_ep_info(ep, error), traceback=tb), ep.name in require)
            continue
        _register(pm, plugin, _ep_info(ep), ep.name in require, lenient)


def _load_plugins_dir(pm: PluginManager, directory: Path, blocked: set[str], require: set[str], lenient: bool) -> None:
    if not directory.is_dir():
        raise PluginError(f"--plugins-dir {directory}: not a directory")
    for path in sorted(directory.glob("*.py")):
        name = path.stem
        if name in blocked or pm.has_plugin(name):
            continue
        spec = importlib.util.spec_from_file_location(f"evoens_local_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            error, tb = _import_error(exc)
            _fail(pm, PluginInfo(name, str(path), LOCAL, error, tb), name in require)
            continue
        _register(pm, module, PluginInfo(name, str(path), LOCAL), name in require, lenient)


def _check_disabled(disable: Iterable[str], known: set[str]) -> None:
    """``-p no:NAME`` (or ``plugins.disable``) must name a plugin: a typo would silently do nothing."""
    for name in sorted({n.removeprefix("no:").strip() for n in disable} - known - {""}):
        raise PluginError(
            f"-p no:{name}: there is no plugin named {name!r}{did_you_mean(name, known)}; "
            f"known: {', '.join(sorted(known))}"
        )


def describe_value(value: object, depth: int = 0) -> str:
    """A hook argument as the trace shows it: short, never its data. A tensor is its shape, dtype
    and device; the run is its directory; a mapping its keys; other objects their type."""
    import torch  # only called while tracing; torch is loaded by then

    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')} {value.device}"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    if hasattr(value, "out_dir") and hasattr(value, "config"):  # the Run (and its RunContext)
        return f"{type(value).__name__}({value.out_dir})"
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        return "{" + ", ".join(keys[:6]) + (f", ... {len(keys)} keys" if len(keys) > 6 else "") + "}"
    if isinstance(value, (tuple, list)) and depth == 0 and len(value) <= 4:
        inner = ", ".join(describe_value(v, depth + 1) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}[{len(value)}]"
    return type(value).__name__


class _CallTracer:
    """One line per hook call, written when the call starts, indented by nesting depth."""

    def __init__(self, write: Callable[[str], Any]) -> None:
        self.write, self.depth = write, 0

    def before(self, hook_name: str, hook_impls: Any, kwargs: Mapping[str, Any]) -> None:
        args = ", ".join(f"{k}={describe_value(v)}" for k, v in kwargs.items())
        self.write(f"{'  ' * self.depth}{hook_name}({args}) -> {len(hook_impls)} impl(s)\n")
        self.depth += 1

    def after(self, outcome: Any, hook_name: str, hook_impls: Any, kwargs: Mapping[str, Any]) -> None:
        self.depth -= 1


def enable_tracing(pm: PluginManager, write: Callable[[str], Any] | None = None) -> Callable[[], None]:
    """Write one short line per hook call through ``write`` (stderr by default): the hook, each
    argument summarised by :func:`describe_value` (no tensor data, no whole-run dumps) and how
    many implementations it reaches. Returns the function that stops tracing."""
    tracer = _CallTracer(write or sys.stderr.write)
    return pm.add_hookcall_monitoring(tracer.before, tracer.after)


def create_plugin_manager(
    *,
    plugins: Iterable[object | tuple[str, object]] = (),
    disable: Iterable[str] = (),
    require: Iterable[str] = (),
    entry_points: bool = True,
    plugins_dir: str | Path | None = None,
    trace: bool | None = None,
    env: Mapping[str, str] | None = None,
    lenient: bool = False,
) -> PluginManager:
    """Build the manager for one run or command.

    ``plugins`` are registered first (objects or ``(name, object)`` pairs), then the entry-point
    group ``evoens`` and the ``plugins_dir``. A required plugin that is blocked or missing, a
    ``disable`` name that no plugin has, or a plugin that violates the contract (unless
    ``lenient``: then it is listed in ``pm.failures``) raises :class:`PluginError`.
    """
    env = os.environ if env is None else env
    pm = PluginManager()
    blocked = blocked_names(disable, env)
    required = set(require)
    for name in blocked:
        pm.set_blocked(name)
    given = set()  # names of the plugins passed in, blocked ones included
    for item in plugins:
        name, plugin = item if isinstance(item, tuple) else (None, item)
        given.add(name or pm.get_canonical_name(plugin))
        pm.register(plugin, name)
    if entry_points:
        _load_entry_points(pm, blocked, required, lenient)
    if plugins_dir is not None:
        _load_plugins_dir(pm, Path(plugins_dir), blocked, required, lenient)
    known = set(pm.infos) | {f.name for f in pm.failures} | given
    known |= {ep.name for ep in _entry_points()} if entry_points else set()
    known |= {p.stem for p in Path(plugins_dir).glob("*.py")} if plugins_dir is not None else set()
    _check_disabled(disable, known)
    missing = sorted(n for n in required if not pm.has_plugin(n) or pm.is_blocked(n))
    if missing:
        raise PluginError(f"required plugin(s) not available: {', '.join(missing)}; see `evoens plugins`")
    pm.check_pending()  # backstop: _validate already reports unknown hooks by plugin
    pm.hook.evoens_addhooks.call_historic(kwargs={"pluginmanager": pm})
    if trace if trace is not None else env.get(TRACE_ENV, "") not in ("", "0"):
        enable_tracing(pm)
    return pm


def _tagged_providers(function: Any, plugin_name: str) -> Any:
    def register_providers(*args: Any) -> list[Provider]:
        try:
            provided = list(function(*args) or ())
        except UserError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin '{plugin_name}' failed in evoens_register_providers: {type(exc).__name__}: {exc}"
            ) from exc
        for p in provided:
            require_provider(p, plugin_name)
        return [replace(p, plugin=plugin_name) for p in provided]

    return register_providers


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Every plugin's providers, through one pluggy call of ``evoens_register_providers`` (each
    provider already tagged with its plugin by :meth:`PluginManager.register`)."""
    registry = Registry()
    registry.absent = {name: "disabled" for name, plugin in pm.list_name_plugin() if plugin is None}
    registry.absent.update((f.name, f"failed to load: {f.error}"[:160]) for f in getattr(pm, "failures", ()))
    for provided in reversed(pm.hook.evoens_register_providers()):  # pluggy answers newest plugin first
        for provider in provided:
            registry.add(provider, provider.plugin)
    return registry


def plugin_for_exception(pm: pluggy.PluginManager, hookname: str, exc: BaseException) -> str | None:
    """The name of the plugin whose ``hookname`` implementation raised ``exc`` (from its traceback)."""
    impls = getattr(pm.hook, hookname).get_hookimpls()
    codes = {getattr(i.function, "__code__", None): i.plugin_name for i in impls}
    tb = exc.__traceback__
    blamed = None
    while tb is not None:
        blamed = codes.get(tb.tb_frame.f_code, blamed)
        tb = tb.tb_next
    return blamed


def describe_plugins(pm: PluginManager) -> list[dict[str, Any]]:
    """For ``evoens plugins``: name, distribution, version, hooks and providers of each plugin."""
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:
            continue
        info = pm.infos.get(name, PluginInfo(name))
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        providers = [f"{p.kind}:{p.name}" for p in pm.registry.by_plugin(name)]
        rows.append(
            {
                "name": name,
                "distribution": info.dist,
                "version": info.version,
                "hooks": hooks,
                "providers": providers,
                "error": None,
            }
        )
    for info in pm.failures:
        rows.append(
            {
                "name": info.name,
                "distribution": info.dist,
                "version": info.version,
                "hooks": [],
                "providers": [],
                "error": info.error,
            }
        )
    return rows
