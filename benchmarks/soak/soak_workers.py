"""A filler process of the soak: ``fill(workers=2)`` on STORE (``python soak_workers.py STORE``)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from soak_fns import slow_values

    import infl_array as ia

    ia.open(sys.argv[1], fn=slow_values).fill(progress=False, workers=2)
