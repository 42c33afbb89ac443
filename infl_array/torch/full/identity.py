"""What identifies a torch backend's values, for caching: its config and fingerprints.

:class:`IdentityMixin` holds the part of :class:`~infl_array.torch.full.base.TorchInfluenceBase`
that names what the backend computes: ``influence_config`` (backend, settings, loss and fit
data; subclasses add their settings through ``_settings``), ``description`` (what ``info`` and a
store's ``computed_by`` show), and the fingerprints of the parameters influence is computed at
(``model_fingerprint``, ``parameter_fingerprints``, ``changed_parameters``). Its methods read
the base class's settings and fitted state; the split keeps each class to one job.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from infl_array.torch.data.options import loss_name
from infl_array.torch.full.functional import LossFn, model_fingerprint, parameter_fingerprints
from infl_array.torch.full.param_blocks import (
    BlockStructure,
    SecondOrderMode,
    block_structure_config,
)

__all__ = ["IdentityMixin"]


class IdentityMixin:
    """Config and fingerprints of the torch backends (see the module docstring)."""

    model: nn.Module
    loss: LossFn
    regularization: Any
    block_structure: BlockStructure
    second_order_mode: SecondOrderMode
    _fit_fingerprint: str | None
    _model_fingerprint: str | None
    _parameter_fingerprints: dict[str, str] | None

    def _settings(self) -> dict[str, Any]:
        """Backend-specific settings that change results (for :meth:`influence_config`)."""
        return {}

    def influence_config(self) -> dict[str, Any]:
        """JSON-able identification of backend, settings, loss and fit data.

        Returns
        -------
        dict
            ``{"backend", "regularization", "block_structure", "second_order_mode",
            <settings>, "loss", "fit_data"}``; ``fit_data`` is the fit data's fingerprint, or
            ``None`` before :meth:`fit`.
        """
        return {
            "backend": type(self).__name__,
            "regularization": self.regularization,
            "block_structure": block_structure_config(self.block_structure),
            "second_order_mode": self.second_order_mode.value,
            **self._settings(),
            "loss": loss_name(self.loss),
            "fit_data": self._fit_fingerprint,
        }

    def description(self) -> dict[str, Any]:
        """What the backend computes, as ``info`` and the store's ``computed_by`` show it.

        The :meth:`influence_config` by default; backends whose config carries settings they
        do not use (the per-layer backends) describe what they use instead.
        """
        return self.influence_config()

    def model_fingerprint(self) -> str:
        """sha256 hex digest of the parameters influence is computed at.

        The parameters as of :meth:`fit` once fitted, the model's current ones before.
        """
        if self._model_fingerprint is not None:
            return self._model_fingerprint
        return model_fingerprint(self.model)

    def parameter_fingerprints(self) -> dict[str, str]:
        """``{parameter name: digest}`` as of :meth:`fit` once fitted, the current ones before."""
        if self._parameter_fingerprints is not None:
            return dict(self._parameter_fingerprints)
        return parameter_fingerprints(self.model)

    def changed_parameters(self) -> list[str]:
        """Parameters whose values (or shapes) changed since :meth:`fit`; empty before it.

        A model edited after ``fit`` (trained further, weights loaded) would mix curvature of
        the old weights with gradients of the new ones: ``create`` and ``open`` refuse it.
        """
        if self._parameter_fingerprints is None:
            return []
        now = parameter_fingerprints(self.model)
        fit = self._parameter_fingerprints
        return [n for n in fit.keys() | now.keys() if fit.get(n) != now.get(n)]
