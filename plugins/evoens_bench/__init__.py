"""Built-in benchmark suites for ``evoens bench`` (each also runs as ``python benchmarks/NAME.py``)."""
