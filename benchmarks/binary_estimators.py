"""Run the ``binary-estimators`` suite as a script: ``python benchmarks/binary_estimators.py [--quick] [--out DIR]``."""

import sys

from evoens.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "binary-estimators", *sys.argv[1:]]))
