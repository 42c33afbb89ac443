"""infl_array: influence-function matrices as lazy, cached, sliceable arrays.

Examples
--------
>>> import infl_array as ia
>>> sorted(n for n in ia.__all__ if n[0].isupper())[:3]
['BlockFunctionError', 'Compression', 'CorruptBlockError']
"""

from __future__ import annotations

from infl_array.arrays.influence import InfluenceArray, open_array
from infl_array.arrays.top_k import TopKArray
from infl_array.errors import (
    BlockFunctionError,
    CorruptBlockError,
    MissingBlockError,
    NotAStoreError,
    StaleCacheError,
)
from infl_array.protocol import FactorisedInfluence
from infl_array.storage.meta import Compression
from infl_array.version import __version__

open = open_array

__all__ = [
    "BlockFunctionError",
    "Compression",
    "CorruptBlockError",
    "FactorisedInfluence",
    "InfluenceArray",
    "MissingBlockError",
    "NotAStoreError",
    "StaleCacheError",
    "TopKArray",
    "__version__",
    "open",
]
