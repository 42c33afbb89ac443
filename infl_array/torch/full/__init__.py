"""Full-parameter backends: influence through the curvature of all (selected) parameters.

Owns the shared backend base (:mod:`~infl_array.torch.full.base`), the functional model and
per-sample gradients (:mod:`~infl_array.torch.full.functional`), parameter blocks
(:mod:`~infl_array.torch.full.param_blocks`), curvature products
(:mod:`~infl_array.torch.full.curvature`), diagnostics, preconditioners, low-rank helpers, and the
backends themselves: direct, CG, LiSSA, Arnoldi, Nyström sketch and DataInf.

May import: torch, scipy, the core (:mod:`infl_array.errors`, :mod:`infl_array.storage` and
up), :mod:`infl_array.torch.data` and :mod:`infl_array.torch.source`.
"""

__all__: list[str] = []
