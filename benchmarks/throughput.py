"""Run the ``throughput`` suite as a script: ``python benchmarks/throughput.py [--quick] [--out DIR]``."""

import sys

from evoens.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "throughput", *sys.argv[1:]]))
