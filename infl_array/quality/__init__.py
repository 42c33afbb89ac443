"""Quality: scoring attributions against retraining (numpy only).

Owns the scores (:mod:`~infl_array.quality.scores`: linear datamodeling score, leave-one-out
correlation, mislabel detection, held-out damping choice) and their shared numerics
(:mod:`~infl_array.quality.stats`). Every public name of :mod:`~infl_array.quality.scores` is
re-exported here, so ``from infl_array.quality import lds`` works.

May import: numpy, and every core layer below it (:mod:`infl_array.arrays` and down). Never
torch.
"""

from __future__ import annotations

from infl_array.quality import scores
from infl_array.quality.scores import *  # noqa: F403 (every name of scores.__all__)

__all__ = list(scores.__all__)
