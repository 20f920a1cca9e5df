"""``python -m benchmarks.peers``: the same as ``python -m benchmarks --peers``."""

import sys

from .run import main

sys.exit(main())
