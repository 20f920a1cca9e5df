"""``python -m benchmarks``: run the suite (see run.py)."""

import sys

from .run import main

sys.exit(main())
