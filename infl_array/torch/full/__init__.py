"""Full-parameter backends: influence through the curvature of all (selected) parameters.

Owns the shared backend base (:mod:`~infl_array.torch.full.base`), the lazy build behind every
backend's ``fit`` (:mod:`~infl_array.torch.full.deferred`), the checks of a model and its data
before any influence is computed (:mod:`~infl_array.torch.full.checks`), the functional model,
per-sample gradients and model fingerprint (:mod:`~infl_array.torch.full.functional`),
parameter blocks (:mod:`~infl_array.torch.full.param_blocks`), data passes and curvature
products (:mod:`~infl_array.torch.full.curvature`), a backend's config and fingerprints
(:mod:`~infl_array.torch.full.identity`), batched conjugate gradient
(:mod:`~infl_array.torch.full.cg_solver`), diagnostics, preconditioners, low-rank helpers, and
the backends themselves: direct, CG, LiSSA, Arnoldi, Nyström sketch and DataInf.

May import: torch, scipy, the core (:mod:`infl_array.errors` and up) and
:mod:`infl_array.torch.data`. Never :mod:`~infl_array.torch.layerwise` or
:mod:`~infl_array.torch.source` (they import it).
"""

__all__: list[str] = []
