"""The ``evoens`` command: run, resume, bench, plugins, --version.

User errors (a bad config, missing data, an unknown provider, a broken plugin) print one line
``evoens: error: ...`` and exit with code 2; a run that cannot go on for an outside reason (a
checkpoint that cannot be written) prints one line too and exits with code 1; tracebacks only
with ``--debug``. A run stopped by SIGINT (Ctrl-C) exits with 130, by SIGTERM with 143 (the
shells' 128 + signal number), after a line saying how to resume it. A run directory that holds a
run already (use ``--overwrite`` to move it aside) or is in use by another process is a user error;
``resume`` of a run that already reached ``generations`` says there is nothing to do and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evoens import __version__
from evoens.errors import RunError, UserError

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it


def _plugin_switch(value: str) -> str:
    """``-p no:NAME`` is the only form: ``-p NAME`` (pytest's "load NAME") would do the opposite."""
    if not value.startswith("no:") or not value.removeprefix("no:").strip():
        raise argparse.ArgumentTypeError(
            f"-p takes no:NAME and disables the plugin NAME (got {value!r}); installed plugins load by "
            "themselves, --plugins-dir DIR adds local ones, and `evoens plugins` lists them"
        )
    return value


def _plugin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        dest="disable",
        action="append",
        default=[],
        type=_plugin_switch,
        metavar="no:NAME",
        help="disable the plugin NAME (repeatable); also EVOENS_DISABLE_PLUGINS=a,b",
    )
    parser.add_argument("--plugins-dir", help="also load every *.py file of this directory as a plugin")
    parser.add_argument("--trace-plugins", action="store_true", help="print every hook call to stderr")


def _threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch intra-op threads (the config's `threads`; 0: torch's default)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evoens", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"evoens {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a TOML config")
    run.add_argument("config", help="path of the run config (TOML)")
    run.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="if --out holds a run already, move it aside to DIR.old-<timestamp> (never deleted)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set trainer.popsize=128 (repeatable)",
    )
    run.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override the config's device")
    run.add_argument("--data-dir", help="directory of downloaded datasets (also EVOENS_DATA_DIR)")
    run.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster for trainer.num_actors: HOST:PORT or 'auto' (the config's ray.address)",
    )
    _plugin_args(run)
    _threads_arg(run)

    resume = sub.add_parser("resume", help="continue a run directory from its newest checkpoint")
    resume.add_argument("dir", help="the run directory (holds config.toml and checkpoints/)")
    resume.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the run's config, e.g. --set generations=500",
    )
    _plugin_args(resume)
    _threads_arg(resume)

    bench = sub.add_parser("bench", help="run a benchmark suite (no NAME: list the suites)")
    bench.add_argument("name", nargs="?", help="suite name, see `evoens bench`")
    bench.add_argument("--all", action="store_true", help="run every suite")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="a small grid (seconds to a few minutes a suite on a laptop CPU; the first line says how long its "
        "last recorded run took, and progress follows)",
    )
    bench.add_argument("--out", default="benchmarks/results", help="where NAME.json / NAME.md / NAME.png go")
    bench.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    bench.add_argument(
        "--threads", type=int, metavar="N", help="intra-op threads of the suites and their runs (default: torch's)"
    )
    _plugin_args(bench)

    plugins = sub.add_parser("plugins", help="list plugins: distribution, version, hooks, providers")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    _plugin_args(plugins)
    for command in sub.choices.values():  # `evoens run ... --debug` as well as `evoens --debug run ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _manager(args: argparse.Namespace, config: Any = None, lenient: bool = False) -> Any:
    """The plugin manager of a command (``lenient``: list broken plugins instead of stopping); run
    and resume build it from their resolved config (the engine applies its ``threads``)."""
    from evoens.manager import create_plugin_manager

    disable = list(args.disable) + (list(config.plugins.disable) if config else [])
    require = list(config.plugins.require) if config else []
    return create_plugin_manager(
        disable=disable,
        require=require,
        plugins_dir=args.plugins_dir,
        trace=args.trace_plugins or None,
        lenient=lenient,
    )


def _interrupted(summary: dict[str, Any], out: Path) -> int:
    """The exit code of a run stopped by a signal, after the line saying how to go on."""
    received = summary.get("signal") or "SIGINT"
    print(f"run interrupted by {received}: {out / 'summary.json'}; continue with `evoens resume {out}`")
    return EXIT_CODES.get(received, 130)


def cmd_run(args: argparse.Namespace) -> int:
    from evoens.config import load_config
    from evoens.engine import execute

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={json.dumps(args.device)}")
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    if args.ray_address:
        overrides.append(f"ray.address={json.dumps(args.ray_address)}")
    config = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    summary = execute(config, out, _manager(args, config), overwrite=args.overwrite)
    if summary.get("status") == "interrupted":
        return _interrupted(summary, out)
    shown = {k: summary[k] for k in ("best_fitness", "test_accuracy", "generations", "wall_seconds") if k in summary}
    print(f"run finished: {out / 'summary.json'} " + json.dumps(shown))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from evoens.config import load_config
    from evoens.engine import resume
    from evoens.rundir import NothingToDo, RunDirError

    config_path = Path(args.dir) / "config.toml"
    if not config_path.is_file():
        raise RunDirError(f"{args.dir} is not a run directory: it has no config.toml (`evoens run CONFIG --out DIR`)")
    try:
        summary = resume(args.dir, _manager(args, load_config(config_path, args.overrides)), args.overrides)
    except NothingToDo as done:  # exit 0: a re-queued resume of a complete run is no failure
        print(done)
        return 0
    if summary.get("status") == "interrupted":
        return _interrupted(summary, Path(args.dir))
    print(f"run resumed and finished: {Path(args.dir) / 'summary.json'} status={summary.get('status')}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from evoens.manager import describe_plugins

    rows = describe_plugins(_manager(args, lenient=True))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        origin = f"{row['distribution']} {row['version']}" if row["distribution"] else "local"
        print(f"{row['name']} ({origin})" + (f"  FAILED: {row['error']}" if row["error"] else ""))
        if row["hooks"]:
            print(f"  hooks: {', '.join(row['hooks'])}")
        if row["providers"]:
            print(f"  providers: {', '.join(row['providers'])}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from evoens.bench import run_suite, torch_threads
    from evoens.run import resolve_device

    listing = not (args.all or args.name)
    pm = _manager(args, lenient=listing)
    registry = pm.registry
    names = registry.names("benchmark") if args.all else [args.name] if args.name else []
    if not names:
        for failure in pm.failures:
            print(f"plugin {failure.name} not loaded: {failure.error}", file=sys.stderr)
        for provider in registry:
            if provider.kind == "benchmark":
                print(f"{provider.name:20s} {provider.description}  [{provider.plugin}]")
        return 0
    device = resolve_device(args.device)
    with torch_threads(args.threads or None):  # the suites' runs keep it (their configs' threads = 0)
        for name in names:
            provider = registry.get("benchmark", name)
            run_suite(provider.factory, name, quick=args.quick, out=Path(args.out), device=device)
            print(f"bench {name}: {Path(args.out) / (name + '.md')}")
    return 0


COMMANDS = {"run": cmd_run, "resume": cmd_resume, "bench": cmd_bench, "plugins": cmd_plugins}


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced, e.g. by pytest)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_output(debug: bool) -> None:
    """evoens's own log lines on stderr; third-party import-time noise stays out of the way."""
    # evotorch 0.6.1 calls torch.jit.script at import, which torch >= 2.10 deprecates
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    log = logging.getLogger("evoens")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("evoens: %(levelname)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if debug else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_output(args.debug)
    if getattr(args, "threads", None) is not None and hasattr(args, "overrides"):  # run/resume: in config.toml
        args.overrides.append(f"threads={args.threads}")
    try:
        return COMMANDS[args.command](args)
    except (UserError, RunError) as exc:  # ConfigError, DataError, PluginError, ... are UserErrors
        if args.debug:
            raise
        print(f"evoens: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UserError) else 1
    except KeyboardInterrupt as exc:
        received = getattr(exc, "signal", "SIGINT")  # the checkpoint plugin's Interrupted says which, and more
        if str(exc):  # it says where to go on from
            print(f"evoens: interrupted: {exc}", file=sys.stderr)
        else:
            where = {"run": getattr(args, "out", None), "resume": getattr(args, "dir", None)}.get(args.command)
            hint = f"; continue from its newest checkpoint with `evoens resume {where}`" if where else ""
            print(f"evoens: interrupted{hint}", file=sys.stderr)
        return EXIT_CODES.get(received, 130)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
