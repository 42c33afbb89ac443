"""The factorised-influence protocol: how any influence model plugs into an InfluenceArray.

An influence model (a "backend": the classes of :mod:`infl_array.torch`, or a user's own)
computes influence as an inner product of per-sample factors::

    I[i, j] = test_factors(test[i]) . train_factors(train[j])

``test_factors`` returns, for a batch of test samples, ``(H + lambda*Id)^-1 grad l(z_test)``
(one row per sample) and ``train_factors`` returns ``grad l(z_train)`` (or, for low-rank
methods, both in a shared projected basis). Rows are samples. Unless the backend declares
``factor_product`` (below), both have the same number of columns and the block of the
influence matrix for ``rows x cols`` is ``test_factors(rows) @ train_factors(cols).T``.

``influence_config()`` returns a JSON-able mapping that identifies the backend and its
settings; the store records it, and opening a store with a model whose config differs
raises :class:`~infl_array.errors.StaleCacheError`. ``model_fingerprint()`` (optional) returns
a string that identifies the parameter values the influence is computed at;
``parameter_fingerprints()`` and ``changed_parameters()`` (optional) fingerprint each parameter
as of ``fit`` and name those whose values changed since (a model edited after ``fit`` is
refused, naming them; a store records the per-parameter fingerprints, so opening it with a
refitted model names the parameters that differ).

**Compact train factors.** A backend whose train factors are not in the test factors' space
(compact per-layer forms: :class:`~infl_array.torch.EkfacInfluence` keeps a layer that sees one
position per sample as its output gradient and its input, not their outer product) declares
``factor_product(test_factors, train_factors)`` returning the ``(n_test, n_train)`` block, and
may declare ``factor_diagonal(test_factors, train_factors)`` (the row-wise pairs: the
self-influence); the store then multiplies factors only through them, and so must anyone who
takes the factors out. For backends that do not declare ``factor_product``,
``test_factors @ train_factors.T`` is the influence exactly.

Also optional, and used when present: ``check_data(x, y, what=...)`` refuses data the model
cannot take (called on the first samples of each data set by ``create`` and ``open``, before
anything is written); ``diagnostics()`` returns ``{key: message}`` of what the solves found
(recorded in the store as notes, :mod:`infl_array.storage.notes`); ``prepare()`` runs deferred
fitting work (called before the model is sent to worker processes); ``budget`` (an
:class:`~infl_array.engine.budget.Budget`) is the memory budget the backend holds its memory in:
arrays made from it draw their factor memo, decoded blocks and working space from the same
budget, so that the backend's ``memory_budget`` bounds them together; ``test_factor_width`` and
``train_factor_width`` say how many columns the factors have (a new store's default block shape
is chosen from them and the budget).

This module imports neither torch nor zarr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["FactorisedInfluence"]


@runtime_checkable
class FactorisedInfluence(Protocol):
    """Per-sample test and train factors whose inner product is the influence.

    ``test_factors(x_test, y_test) @ train_factors(x_train, y_train).T`` is the influence block
    for a backend that does not declare ``factor_product``. A backend that declares
    ``factor_product(test_factors, train_factors)`` (compact train factors, e.g.
    :class:`~infl_array.torch.EkfacInfluence`) gives the block only through it: its train
    factors may have a different width from its test factors, and their plain product is not
    the influence (see the module docstring).
    """

    def test_factors(self, x: Any, y: Any) -> Any:
        """``(n, k)`` array or tensor: inverse-Hessian-applied test gradients, one row each."""
        ...

    def train_factors(self, x: Any, y: Any) -> Any:
        """``(n, k)`` array or tensor: train gradients (or their projection), one row each."""
        ...

    def influence_config(self) -> Mapping[str, Any]:
        """JSON-able settings that identify the influence model (class, hyper-parameters)."""
        ...


@runtime_checkable
class FactorProduct(Protocol):
    """Optional: blocks are not ``test_factors @ train_factors.T`` (structured factors)."""

    def factor_product(self, test_f: Any, train_f: Any) -> Any:
        """The block ``(n_test, n_train)`` of two factor sets."""
        ...


@runtime_checkable
class FactorDiagonal(Protocol):
    """Optional: the self-influence is not the row-wise inner product of the factors."""

    def factor_diagonal(self, test_f: Any, train_f: Any) -> Any:
        """Row-wise products of factor sets of the same points (1-D)."""
        ...


@runtime_checkable
class ChecksData(Protocol):
    """Optional: refuses data the model cannot take, before anything is computed."""

    def check_data(self, x: Any, y: Any, what: str = "train") -> None:
        """Raise naming the problem and the fix when ``(x, y)`` cannot be used."""
        ...


@runtime_checkable
class Diagnosed(Protocol):
    """Optional: what the solves found, recorded in the store as notes."""

    def diagnostics(self) -> Mapping[str, str]:
        """``{key: message}``; empty when all is well."""
        ...


@runtime_checkable
class Preparable(Protocol):
    """Optional: deferred fitting work, run once before the model is sent to workers."""

    def prepare(self) -> Any:
        """Run the deferred work now (once)."""
        ...


@runtime_checkable
class Fingerprinted(Protocol):
    """Optional: a string that identifies the parameter values influence is computed at."""

    def model_fingerprint(self) -> str:
        """E.g. a sha256 of the parameters."""
        ...


@runtime_checkable
class ParameterFingerprinted(Protocol):
    """Optional: each parameter's fingerprint as of fit, and those changed since."""

    def parameter_fingerprints(self) -> Mapping[str, str]:
        """``{parameter name: short digest of its values}`` the influence is computed at."""
        ...

    def changed_parameters(self) -> list[str]:
        """Names of the parameters whose values differ from those at fit (empty if none)."""
        ...


@runtime_checkable
class Budgeted(Protocol):
    """Optional: the :class:`~infl_array.engine.budget.Budget` the backend holds its memory in."""

    budget: Any


@runtime_checkable
class FactorWidths(Protocol):
    """Optional: the number of columns of the test and train factors."""

    test_factor_width: Any
    train_factor_width: Any


@runtime_checkable
class ModuleBacked(Protocol):
    """Optional: the wrapped model (an ``nn.Module``), whose device the factors live on."""

    model: Any


@runtime_checkable
class Fittable(Protocol):
    """Optional: whether the model is fitted (a bool, or a method returning one)."""

    is_fitted: Any
