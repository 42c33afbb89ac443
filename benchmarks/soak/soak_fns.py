"""Block functions of the soak's filler and worker processes (importable by spawned workers).

Standard library and numpy only at import, so a forked filler starts in milliseconds.
"""

from __future__ import annotations

import os
import time

import numpy as np
from soak_common import values

DELAY_S = float(os.environ.get("SOAK_BLOCK_DELAY", "0.004"))


def slow_values(rows: range, cols: range) -> np.ndarray:
    """The reference block after a short sleep (so kills land inside fills)."""
    time.sleep(DELAY_S)
    return values(rows, cols)
