"""Data views and checks for the torch backends.

Owns normalising data forms into indexed views (:mod:`~infl_array.torch.data.views`), checks of
models and samples (:mod:`~infl_array.torch.data.checks`), the validation of backend options
(:mod:`~infl_array.torch.data.options`), and language-model data: mapping samples, output
objects and ``causal_lm_loss`` (:mod:`~infl_array.torch.data.tokens`).

May import: torch, numpy, the core, and the functional model of
:mod:`infl_array.torch.full.functional` (for the model checks).
"""

__all__: list[str] = []
