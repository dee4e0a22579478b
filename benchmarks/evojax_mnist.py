"""Run the ``evojax-mnist`` suite as a script: ``python benchmarks/evojax_mnist.py [--quick] [--out DIR]``."""

import sys

from evoens.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "evojax-mnist", *sys.argv[1:]]))
