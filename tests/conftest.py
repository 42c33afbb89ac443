from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# tests import their helpers as a plain module (tests/ is not a package)
sys.path.insert(0, str(Path(__file__).parent))

# pyDVL's checks run in their own numpy<2 environment (.ci/pydvl_env.sh); elsewhere the
# doctest collector must not import them.
collect_ignore_glob = [] if importlib.util.find_spec("pydvl") else ["pydvl_compat/*"]
