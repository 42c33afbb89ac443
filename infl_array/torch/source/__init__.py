"""The bridge from a model to the engine's block-source contract (the top torch subpackage).

Owns the model-backed block sources (:mod:`~infl_array.torch.source.source`), their factors
(:mod:`~infl_array.torch.source.factor_cache`: the memo, :mod:`~infl_array.torch.source.memo`,
in front of the core's cache machine, :mod:`infl_array.engine.keeper`), the adapters that give
every model form one factorised interface (:mod:`~infl_array.torch.source.adapters`,
:mod:`~infl_array.torch.source.pydvl`) and the pairings they declare for making blocks from
factors (:mod:`~infl_array.torch.source.pairing`), and their growing data
(:mod:`~infl_array.torch.source.growth`).

May import: torch, numpy, the core (:mod:`infl_array.engine.sources` is the contract it
implements; :mod:`infl_array.storage` holds the factors), :mod:`infl_array.torch.data` and
:mod:`infl_array.torch.full` (the one model fingerprint). It takes models through the declared
protocols of :mod:`infl_array.protocol`, so it never imports a backend class.
"""

__all__: list[str] = []
