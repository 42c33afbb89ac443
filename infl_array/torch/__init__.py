"""Torch backends of infl_array: influence factors for torch models.

Every backend computes, in pyDVL's "up" convention (positive = helpful),
``I[i, j] = grad l(z_test_i)^T (H + lambda*Id)^-1 grad l(z_train_j)`` with ``H`` the Hessian
of the mean training loss over the fit data, through the factorised protocol
(``test_factors``, ``train_factors``, ``influence_config``, ``model_fingerprint``):

* :class:`DirectInfluence` -- explicit Hessian and a Cholesky/LU solve;
* :class:`CgInfluence` -- batched conjugate gradient on Hessian-vector products;
* :class:`LissaInfluence` -- the LiSSA Neumann-series iteration;
* :class:`ArnoldiInfluence` -- top eigenpairs of the Hessian by Lanczos.

Per-sample gradients and Hessian products use :mod:`torch.func`; data forms are normalised by
:func:`infl_array.torch.data.as_indexed`.
"""

from __future__ import annotations

from ._base import TorchInfluenceBase
from ._functional import model_fingerprint
from .arnoldi import ArnoldiInfluence
from .blocks import BlockMode, SecondOrderMode
from .cg import CgInfluence
from .data import IndexedData, as_indexed
from .datainf import InverseHarmonicMeanInfluence
from .diagnostics import ConvergenceWarning, IndefiniteHessianWarning
from .direct import DirectInfluence
from .lissa import LissaInfluence
from .nystroem import NystroemSketchInfluence
from .preconditioner import JacobiPreconditioner, NystroemPreconditioner, Preconditioner

__all__ = [
    "ArnoldiInfluence",
    "BlockMode",
    "CgInfluence",
    "ConvergenceWarning",
    "DirectInfluence",
    "IndefiniteHessianWarning",
    "IndexedData",
    "InverseHarmonicMeanInfluence",
    "JacobiPreconditioner",
    "LissaInfluence",
    "NystroemPreconditioner",
    "NystroemSketchInfluence",
    "Preconditioner",
    "SecondOrderMode",
    "TorchInfluenceBase",
    "as_indexed",
    "model_fingerprint",
]
