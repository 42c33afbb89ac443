from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests import their helpers as a plain module (tests/ is not a package)
sys.path.insert(0, str(Path(__file__).parent))

# pyDVL's checks run in their own numpy<2 environment (.ci/pydvl_env.sh); elsewhere the
# doctest collector must not import them.
collect_ignore_glob = [] if importlib.util.find_spec("pydvl") else ["pydvl_compat/*"]


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models: intra-op threads only add overhead (badly so on a loaded 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
