"""Run the ``generation`` suite as a script: ``python benchmarks/generation.py [--quick] [--out DIR]``."""

import sys

from evoens.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "generation", *sys.argv[1:]]))
