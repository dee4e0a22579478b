"""A stand-in for Ray on the device machine, which has no Ray and cannot fetch its 70 MB wheel:
EvoTorch imports ``ray`` at import time (``@ray.remote`` on its actor class, ``ray.util.ActorPool``)
but needs it only for ``num_actors > 0``. Anything beyond the import says so, so a run that does
ask for actors fails loudly instead of silently running without them. Never installed with evoens."""

from typing import Any

__version__ = "0.0-stub"


def remote(*args: Any, **kwargs: Any) -> Any:
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]  # @ray.remote on a class or function: left as it is
    return lambda target: target  # @ray.remote(num_cpus=...)


def is_initialized() -> bool:
    return False


def init(*args: Any, **kwargs: Any) -> None:
    raise ImportError("ray.init: this is the device machine's Ray stand-in (benchmarks/device); no actors here")


def __getattr__(name: str) -> Any:
    if name[:1].isupper():  # a type named in an annotation at import (ray.ObjectRef): a placeholder
        return type(name, (), {"__module__": __name__})
    raise ImportError(f"ray.{name}: this is the device machine's Ray stand-in (benchmarks/device); no actors here")
