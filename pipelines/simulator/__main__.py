"""``python -m pipelines.simulator``: run the simulator in the foreground."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
