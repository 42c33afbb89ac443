"""Data views and options for the torch backends (the lowest torch subpackage).

Owns normalising data forms (tensors, arrays, Datasets, DataLoaders) into indexed views with
fingerprints (:mod:`~infl_array.torch.data.views`), data grown by appended points and the
fingerprints of their ranges (:mod:`~infl_array.torch.data.spans`), the validation of backend
options, seeds and loss names (:mod:`~infl_array.torch.data.options`), and language-model data:
mapping samples, output objects and ``causal_lm_loss`` (:mod:`~infl_array.torch.data.tokens`).

May import: torch, numpy and the core (:mod:`infl_array.errors` and up). Never another torch
subpackage: :mod:`~infl_array.torch.full`, :mod:`~infl_array.torch.layerwise` and
:mod:`~infl_array.torch.source` import it (the order ``tests/test_packaging.py`` enforces:
data < full < layerwise < source).
"""

__all__: list[str] = []
