"""``python -m pairq``: the same as the ``pairq`` command."""

from __future__ import annotations

import sys

from pairq.cli import main

sys.exit(main())
