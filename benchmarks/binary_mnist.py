"""Run the ``binary-mnist`` suite as a script: ``python benchmarks/binary_mnist.py [--quick] [--out DIR]``.

Needs MNIST in the data directory: ``EVOENS_DATA_DIR=/work/shared/data`` (or ``~/.cache/evoens/data``)."""

import sys

from evoens.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "binary-mnist", *sys.argv[1:]]))
