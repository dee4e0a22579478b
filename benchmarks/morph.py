"""Run the ``morph`` suite as a script: ``python benchmarks/morph.py [--quick] [--out DIR]``."""

import sys

from evoens.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "morph", *sys.argv[1:]]))
