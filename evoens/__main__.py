"""``python -m evoens`` is the ``evoens`` command."""

import sys

from evoens.cli import main

sys.exit(main())
