"""Per-layer backends: influence from each layer's captured inputs and output gradients.

Owns the per-layer backend base (:mod:`~infl_array.torch.layerwise.base`), capturing layer inputs
and output gradients in one forward and backward pass (:mod:`~infl_array.torch.layerwise.capture`),
Kronecker-factored products (:mod:`~infl_array.torch.layerwise.kronecker`), rows taken from the
fit (:mod:`~infl_array.torch.layerwise.fitrows`), the flush-to-zero helper thread and underflow
guards (:mod:`~infl_array.torch.layerwise.subnormal`, :mod:`~infl_array.torch.layerwise.underflow`),
which parameters are covered and the warning for those left out
(:mod:`~infl_array.torch.layerwise.coverage`), ``nn.MultiheadAttention`` written out for capture
(:mod:`~infl_array.torch.layerwise.attention`), and the EK-FAC and projected backends.

May import: torch, scipy, the core, :mod:`infl_array.torch.data` and
:mod:`infl_array.torch.full` (the shared backend base, checks and functional model). Never
:mod:`~infl_array.torch.source` (it imports the backends' protocol, not the backends).
"""

__all__: list[str] = []
