from __future__ import annotations

import sys
from pathlib import Path

# tests import their helpers as a plain module (tests/ is not a package)
sys.path.insert(0, str(Path(__file__).parent))
