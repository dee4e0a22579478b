"""See ray/__init__.py: the device machine's stand-in."""

from typing import Any


class ActorPool:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError("ray.util.ActorPool: the device machine's Ray stand-in (benchmarks/device) has no actors")
