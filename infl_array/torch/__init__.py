"""Torch backends of infl_array: influence factors for torch models.

Every backend computes, in pyDVL's "up" convention (positive = helpful),
``I[i, j] = grad l(z_test_i)^T (H + lambda*Id)^-1 grad l(z_train_j)`` with ``H`` the Hessian
of the mean training loss over the fit data, through the factorised protocol
(``test_factors``, ``train_factors``, ``influence_config``, ``model_fingerprint``):

* :class:`DirectInfluence` -- explicit Hessian and a Cholesky/LU solve;
* :class:`CgInfluence` -- batched conjugate gradient on Hessian-vector products;
* :class:`LissaInfluence` -- the LiSSA Neumann-series iteration;
* :class:`ArnoldiInfluence` -- top eigenpairs of the Hessian by Lanczos;
* :class:`EkfacInfluence` -- (E)K-FAC curvature per layer;
* :class:`ProjectedInfluence` -- per-layer Kronecker-structured random projections of the
  gradients, preconditioned in the projected space.

The last two are per-layer backends (:mod:`infl_array.torch.layerwise.capture`): they capture each
layer's inputs and output gradients in one forward and backward pass per batch and never form
a per-sample gradient of all parameters. They cover ``nn.Linear``, ``nn.Conv2d``,
``nn.Embedding``, ``transformers``' ``Conv1D``, ``nn.MultiheadAttention`` and normalisation
layers (tied weights once, :mod:`infl_array.torch.layerwise.coverage`); ``fit`` warns with
:class:`PartialCoverageWarning` about trainable parameters left out.

Language models: samples may be ``(n, T)`` token tensors or mappings of Hugging Face model
inputs, outputs may be Hugging Face output objects (their ``logits``), and
:func:`causal_lm_loss` is the per-sequence language-model loss
(:mod:`infl_array.torch.data.tokens`).

Per-sample gradients and Hessian products use :mod:`torch.func`; data forms are normalised by
:func:`infl_array.torch.data.views.as_indexed`.
"""

from __future__ import annotations

from infl_array.torch.data.tokens import causal_lm_loss
from infl_array.torch.data.views import IndexedData, as_indexed
from infl_array.torch.full.arnoldi import ArnoldiInfluence
from infl_array.torch.full.base import TorchInfluenceBase
from infl_array.torch.full.cg import CgInfluence
from infl_array.torch.full.datainf import InverseHarmonicMeanInfluence
from infl_array.torch.full.diagnostics import ConvergenceWarning, IndefiniteHessianWarning
from infl_array.torch.full.direct import DirectInfluence
from infl_array.torch.full.functional import model_fingerprint
from infl_array.torch.full.lissa import LissaInfluence
from infl_array.torch.full.nystroem import NystroemSketchInfluence
from infl_array.torch.full.param_blocks import BlockMode, SecondOrderMode
from infl_array.torch.full.preconditioner import (
    JacobiPreconditioner,
    NystroemPreconditioner,
    Preconditioner,
)
from infl_array.torch.layerwise.capture import MemoryBudgetError
from infl_array.torch.layerwise.coverage import PartialCoverageWarning
from infl_array.torch.layerwise.ekfac import EkfacInfluence
from infl_array.torch.layerwise.projected import ProjectedInfluence

__all__ = [
    "ArnoldiInfluence",
    "BlockMode",
    "CgInfluence",
    "ConvergenceWarning",
    "DirectInfluence",
    "EkfacInfluence",
    "IndefiniteHessianWarning",
    "IndexedData",
    "InverseHarmonicMeanInfluence",
    "JacobiPreconditioner",
    "LissaInfluence",
    "MemoryBudgetError",
    "ProjectedInfluence",
    "NystroemPreconditioner",
    "NystroemSketchInfluence",
    "PartialCoverageWarning",
    "Preconditioner",
    "SecondOrderMode",
    "TorchInfluenceBase",
    "as_indexed",
    "causal_lm_loss",
    "model_fingerprint",
]
