"""Scoring attributions against retraining: LDS, leave-one-out correlation, detection AUC.

numpy only. ``scores`` is an influence matrix of shape ``(n_test, n_train)``: an
:class:`~infl_array.arrays.influence.InfluenceArray` or anything else with ``shape`` and numpy
indexing (a numpy array). It is read a band of test rows at a time through ``scores[rows]``, so an
``InfluenceArray`` is never materialised whole and computes only what it lacks.

Sign convention
---------------
``scores[i, j] > 0`` means train point ``j`` is *helpful* for test point ``i``: upweighting it
lowers the test loss (pyDVL's mode "up", this package's convention). The retrained model's
*output* ``f_i`` on test point ``i`` must therefore grow with helpfulness: use an output that is
higher when the model does better on the test point, for example the correct-class margin
``logit_y - logsumexp(other logits)`` (as in Park et al. 2023) or the negative test loss. With
an output where lower is better (the loss itself), negate it first.

* :func:`lds`: the linear datamodeling score (Park et al. 2023, "TRAK"). For subsets ``S_s`` of
  the train set and the outputs ``f_i(S_s)`` of models retrained on each, the attribution
  predicts ``g_i(S_s) = sum_{j in S_s} scores[i, j]``; the LDS of test point ``i`` is the
  Spearman rank correlation over subsets between ``g_i`` and ``f_i``; :func:`lds` is its mean
  over test points (:func:`lds_per_test` gives each, :func:`lds_bootstrap` the spread over
  resampled subsets).
* :func:`held_out_choice`: picks among candidate attributions (the same method at several
  dampings, say) by LDS without the optimism of picking on the points that score it: chosen on
  one half of the test points, scored on the other, and the other way round.
* :func:`loo_correlation`: removing train point ``j`` changes output ``f_i`` by about
  ``-scores[i, j] / n_train`` (removing a helpful point makes the model worse), so the
  prediction of each leave-one-out change is ``-scores[i, j]``; Pearson and Spearman
  correlations with the measured changes.
* :func:`detection_auc`: mislabelled-point detection ranked by self-influence, largest first.

Spearman correlation is the Pearson correlation of average ranks (ties share their mean rank),
as :func:`scipy.stats.spearmanr` computes it. A correlation whose inputs are constant is
undefined; such test points are NaN in the per-test results and left out of the means (the
results say how many were used); when none is defined a ``ValueError`` is raised.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from infl_array.quality.stats import (
    defined_mean,
    float_array,
    pearson_columns,
    rank_average,
    read_rows,
    row_bands,
    shape2d,
    spearman_columns,
    subset_mask,
)

__all__ = [
    "HeldOutChoice",
    "LooCorrelation",
    "detection_auc",
    "held_out_choice",
    "lds",
    "lds_bootstrap",
    "lds_per_test",
    "loo_correlation",
    "predicted_subset_outputs",
    "rank_average",
    "subset_mask",
]


# ---------------------------------------------------------------------------------- LDS
def predicted_subset_outputs(scores: Any, subsets: Any) -> np.ndarray:
    """Attribution-predicted output of each subset: the sum of its members' scores.

    Parameters
    ----------
    scores : InfluenceArray or numpy.ndarray
        ``(n_test, n_train)`` attributions, read a band of rows at a time.
    subsets : array_like or sequence of array_like
        Boolean mask ``(n_subsets, n_train)`` or a sequence of kept-index arrays.

    Returns
    -------
    numpy.ndarray
        float64, ``(n_subsets, n_test)``: entry ``[s, i] = sum_{j in S_s} scores[i, j]``.

    Examples
    --------
    >>> scores = np.array([[1.0, 2.0, 4.0]])
    >>> predicted_subset_outputs(scores, [[0, 1], [2], [0, 2]])
    array([[3.],
           [4.],
           [5.]])
    """
    n_test, n_train = shape2d(scores)
    mask = subset_mask(subsets, n_train).astype(np.float64)
    out = np.empty((mask.shape[0], n_test), dtype=np.float64)
    for rows in row_bands(scores, n_test):
        out[:, rows] = mask @ read_rows(scores, rows, n_train).T
    return out


def _outputs(outputs: Any, n_subsets: int, n_test: int) -> np.ndarray:
    out = float_array(outputs, "outputs", 2)
    if out.shape != (n_subsets, n_test):
        hint = " (transposed? pass outputs.T)" if out.shape == (n_test, n_subsets) else ""
        raise ValueError(
            f"outputs must have shape (n_subsets, n_test) = {(n_subsets, n_test)}: the output "
            f"on each test point of the model retrained on each subset; got {out.shape}{hint}."
        )
    return out


def _lds_inputs(scores: Any, subsets: Any, outputs: Any) -> tuple[np.ndarray, np.ndarray]:
    n_test, _ = shape2d(scores)
    predicted = predicted_subset_outputs(scores, subsets)
    if predicted.shape[0] < 3:
        raise ValueError(
            f"need at least 3 subsets for a rank correlation, got {predicted.shape[0]}; LDS is "
            "usually measured on 50-100 retrained subsets."
        )
    return predicted, _outputs(outputs, predicted.shape[0], n_test)


def lds_per_test(scores: Any, subsets: Any, outputs: Any) -> np.ndarray:
    """Linear datamodeling score of each test point.

    Parameters
    ----------
    scores : InfluenceArray or numpy.ndarray
        ``(n_test, n_train)`` attributions, positive = helpful (see the module docstring).
    subsets : array_like or sequence of array_like
        Boolean mask ``(n_subsets, n_train)`` or a sequence of kept-index arrays; at least 3.
    outputs : array_like
        ``(n_subsets, n_test)``: output on test point ``i`` of the model retrained on subset
        ``s``, higher = better (a correct-class margin, or the negative test loss).

    Returns
    -------
    numpy.ndarray
        ``(n_test,)`` Spearman correlations over subsets; NaN where undefined (constant).

    Examples
    --------
    >>> scores = np.array([[1.0, 2.0, 4.0], [1.0, -1.0, 0.0]])
    >>> subsets = [[0, 1], [2], [0, 2], [1, 2]]
    >>> outputs = np.array([[0.1, 0.2], [0.4, 0.1], [0.3, 0.5], [0.6, 0.0]])
    >>> lds_per_test(scores, subsets, outputs).round(4)
    array([0.8   , 0.9487])
    """
    predicted, measured = _lds_inputs(scores, subsets, outputs)
    return spearman_columns(predicted, measured)


def lds(scores: Any, subsets: Any, outputs: Any) -> float:
    """Linear datamodeling score (Park et al. 2023): mean over test points of :func:`lds_per_test`.

    Parameters
    ----------
    scores : InfluenceArray or numpy.ndarray
        ``(n_test, n_train)`` attributions, positive = helpful.
    subsets : array_like or sequence of array_like
        Boolean mask ``(n_subsets, n_train)`` or a sequence of kept-index arrays.
    outputs : array_like
        ``(n_subsets, n_test)`` outputs of the retrained models, higher = better.

    Returns
    -------
    float
        In ``[-1, 1]``; test points with an undefined correlation are left out.

    Examples
    --------
    >>> scores = np.array([[1.0, 2.0, 4.0], [1.0, -1.0, 0.0]])
    >>> subsets = [[0, 1], [2], [0, 2], [1, 2]]
    >>> outputs = np.array([[0.1, 0.2], [0.4, 0.1], [0.3, 0.5], [0.6, 0.0]])
    >>> round(lds(scores, subsets, outputs), 4)
    0.8743
    """
    return defined_mean(lds_per_test(scores, subsets, outputs), "LDS")


def lds_bootstrap(
    scores: Any, subsets: Any, outputs: Any, n_boot: int = 200, seed: int = 0
) -> tuple[float, float]:
    """LDS and its spread: the standard deviation over subsets resampled with replacement.

    Parameters
    ----------
    scores, subsets, outputs
        As for :func:`lds`.
    n_boot : int
        Number of bootstrap resamples of the subsets (each of the original size).
    seed : int
        Seed of :func:`numpy.random.default_rng` drawing the resamples.

    Returns
    -------
    (float, float)
        The LDS on all subsets, and the standard deviation of the LDS over the resamples.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> scores = rng.normal(size=(3, 20))
    >>> masks = rng.random((30, 20)) < 0.5
    >>> outputs = masks @ scores.T + 0.1 * rng.normal(size=(30, 3))
    >>> value, spread = lds_bootstrap(scores, masks, outputs, n_boot=50)
    >>> bool(value > 0.9 and spread < 0.1)
    True
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}.")
    predicted, measured = _lds_inputs(scores, subsets, outputs)
    value = defined_mean(spearman_columns(predicted, measured), "LDS")
    rng = np.random.default_rng(seed)
    m = predicted.shape[0]
    boots = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, m, size=m)
        per = spearman_columns(predicted[pick], measured[pick])
        finite = per[np.isfinite(per)]
        boots[b] = finite.mean() if finite.size else np.nan
    return value, float(np.nanstd(boots, ddof=1))


@dataclass(frozen=True)
class HeldOutChoice:
    """The result of :func:`held_out_choice`.

    Attributes
    ----------
    chosen : tuple
        The candidate chosen on the even test positions, then the one chosen on the odd ones.
    held_out : float
        Mean of the LDS of each half at the candidate chosen on the other half: an estimate of
        the LDS of the selection procedure, not inflated by the choice.
    lds : dict
        Each candidate's LDS on all test points (for reading, not for choosing).
    """

    chosen: tuple[Hashable, Hashable]
    held_out: float
    lds: dict[Hashable, float]


def held_out_choice(
    candidates: Mapping[Hashable, Any], subsets: Any, outputs: Any
) -> HeldOutChoice:
    """Choose among candidate attributions by LDS on held-out test points (two-fold).

    Picking the best of several dampings (or methods) by their LDS on the same test points
    overstates what the pick achieves. Here the test points are split into the even and odd
    positions; the candidate with the best mean LDS on one half is scored on the other half,
    and the two held-out scores are averaged, so every test point is scored by a choice that
    was not made on it.

    Parameters
    ----------
    candidates : mapping
        ``key -> scores``, each ``(n_test, n_train)`` as for :func:`lds` (the same shape);
        keys are, for example, the dampings.
    subsets, outputs
        As for :func:`lds`; at least 2 test points.

    Returns
    -------
    HeldOutChoice

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.normal(size=(6, 30))
    >>> masks = rng.random((40, 30)) < 0.5
    >>> outputs = masks @ truth.T
    >>> noisy = {0.1: truth + 3 * rng.normal(size=truth.shape), 1.0: truth}
    >>> choice = held_out_choice(noisy, masks, outputs)
    >>> choice.chosen, round(choice.held_out, 3)
    ((1.0, 1.0), 1.0)
    """
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError(
            "candidates must be a non-empty mapping key -> scores (for example "
            f"{{damping: scores}}), got {type(candidates).__name__}."
        )
    per_test = {key: lds_per_test(s, subsets, outputs) for key, s in candidates.items()}
    sizes = {len(v) for v in per_test.values()}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValueError(
            "every candidate must score the same test points, at least 2 of them; got "
            f"{sorted(sizes)} test points; pass score matrices of one shape."
        )
    positions = np.arange(sizes.pop())
    folds = (positions[0::2], positions[1::2])
    chosen, scored = [], []
    for fit, held in (folds, folds[::-1]):
        best = max(per_test, key=lambda k: _nanmean(per_test[k][fit]))
        chosen.append(best)
        scored.append(_nanmean(per_test[best][held]))
    return HeldOutChoice(
        chosen=(chosen[0], chosen[1]),
        held_out=float(np.mean(scored)),
        lds={k: defined_mean(v, "LDS") for k, v in per_test.items()},
    )


def _nanmean(values: np.ndarray) -> float:
    """Mean of the defined values; -inf when none is (never chosen, never scores)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else -np.inf


# ---------------------------------------------------------------------------------- LOO
@dataclass(frozen=True)
class LooCorrelation:
    """Correlations between predicted and measured leave-one-out changes.

    Attributes
    ----------
    pearson, spearman : float
        The correlations (for ``per_test=True``: means over the test points where defined).
    n_test_used : int
        Test points whose correlation was defined (all of them when ``per_test=False``).
    """

    pearson: float
    spearman: float
    n_test_used: int


def _removed_indices(train_indices: Any, n_train: int) -> np.ndarray:
    """``train_indices`` checked: at least 3 distinct integer train indices, 1-D."""
    idx = np.asarray(train_indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(
            f"train_indices must be a 1-D array of integer train indices, got dtype "
            f"{idx.dtype} and shape {idx.shape}."
        )
    if idx.size < 3:
        raise ValueError(f"need at least 3 removed train points, got {idx.size}.")
    if idx.min() < 0 or idx.max() >= n_train:
        raise IndexError(
            f"train_indices must lie in [0, {n_train}), got min {idx.min()}, max {idx.max()}."
        )
    if np.unique(idx).size != idx.size:
        raise ValueError("train_indices has repeated entries; each removed point once.")
    return idx


def _total_correlation(predicted: np.ndarray, deltas: np.ndarray, n_test: int) -> LooCorrelation:
    """The correlation over the removed points of the changes summed over the test points."""
    a, b = predicted.sum(0)[:, None], deltas.sum(0)[:, None]
    pearson, spearman = pearson_columns(a, b)[0], spearman_columns(a, b)[0]
    if not (np.isfinite(pearson) and np.isfinite(spearman)):
        raise ValueError(
            "the leave-one-out correlation is undefined: the predicted or measured changes "
            "are constant over the removed points."
        )
    return LooCorrelation(float(pearson), float(spearman), n_test)


def loo_correlation(
    scores: Any, loo_deltas: Any, train_indices: Any, *, per_test: bool = False
) -> LooCorrelation:
    """Correlation of attributions with leave-one-out retraining.

    For each removed train point ``j = train_indices[k]`` the model is retrained without it and
    ``loo_deltas[i, k] = f_i(without j) - f_i(full)`` is the change of the output on test point
    ``i`` (higher = better, as for :func:`lds`). The first-order prediction of that change is
    ``-scores[i, j] / n_train``: removing a helpful point lowers the output. Correlations are
    scale-free, so the prediction used is ``-scores[i, j]``.

    Parameters
    ----------
    scores : InfluenceArray or numpy.ndarray
        ``(n_test, n_train)`` attributions, positive = helpful.
    loo_deltas : array_like
        ``(n_test, n_removed)`` measured output changes.
    train_indices : array_like of int
        ``(n_removed,)`` distinct train indices, column ``k`` of ``loo_deltas`` removed
        ``train_indices[k]``; at least 3.
    per_test : bool
        ``False`` (default): one correlation over the removed points between the changes summed
        over all test points (the total test output; robust to retraining noise). ``True``: one
        correlation per test point over the removed points, averaged over the test points
        where it is defined.

    Returns
    -------
    LooCorrelation

    Examples
    --------
    >>> scores = np.array([[3.0, 1.0, -2.0, 0.5], [1.0, 0.0, -1.0, 2.0]])
    >>> deltas = -np.array([[2.9, -2.0, 0.4], [1.1, -0.9, 2.2]]) / 4
    >>> r = loo_correlation(scores, deltas, [0, 2, 3])
    >>> round(r.pearson, 4), r.spearman, r.n_test_used
    (0.9999, 1.0, 2)
    """
    n_test, n_train = shape2d(scores)
    idx = _removed_indices(train_indices, n_train)
    deltas = float_array(loo_deltas, "loo_deltas", 2)
    if deltas.shape != (n_test, idx.size):
        raise ValueError(
            f"loo_deltas must have shape (n_test, n_removed) = {(n_test, idx.size)}, got "
            f"{deltas.shape}."
        )
    predicted = np.empty((n_test, idx.size))
    for rows in row_bands(scores, n_test):
        predicted[rows] = -read_rows(scores, rows, n_train)[:, idx]
    if not per_test:
        return _total_correlation(predicted, deltas, n_test)
    p = pearson_columns(predicted.T, deltas.T)
    s = spearman_columns(predicted.T, deltas.T)
    used = int((np.isfinite(p) & np.isfinite(s)).sum())
    return LooCorrelation(defined_mean(p, "LOO Pearson"), defined_mean(s, "LOO Spearman"), used)


# ---------------------------------------------------------------------------------- detection
def detection_auc(self_influence: Any, flipped_mask: Any) -> float:
    """Area under the ROC curve of finding mislabelled train points by self-influence.

    Points are ranked by self-influence ``grad^T (H + lambda*Id)^-1 grad``, **largest first**:
    a mislabelled point disagrees with the rest of the data, so the model fits it badly (large
    loss gradient) or only by memorising it (high curvature-weighted gradient), and its own
    loss depends most on its own weight. The AUC is the probability that a random flipped point
    ranks above a random clean one, ties counting one half (the Mann-Whitney U statistic over
    ``n_flipped * n_clean``): 1 finds every flipped point first, 0.5 is chance.

    Parameters
    ----------
    self_influence : array_like
        ``(n_train,)`` self-influence values (an ``arr.self_influence()`` array or numpy).
    flipped_mask : array_like of bool
        ``(n_train,)``, ``True`` where the label was flipped.

    Returns
    -------
    float
        The AUC in ``[0, 1]``.

    Examples
    --------
    >>> detection_auc([0.9, 0.1, 0.5, 0.3], [True, False, False, True])
    0.75
    """
    if hasattr(self_influence, "shape") and hasattr(self_influence, "__getitem__"):
        self_influence = self_influence[:]
    values = float_array(self_influence, "self_influence", 1)
    mask = np.asarray(flipped_mask)
    if mask.dtype != bool:
        raise TypeError(
            f"flipped_mask must be boolean (True = label flipped), got dtype {mask.dtype}; "
            "build it with np.isin(np.arange(n_train), flipped_indices)."
        )
    if mask.shape != values.shape:
        raise ValueError(
            f"flipped_mask has shape {mask.shape}, self_influence {values.shape}; they must match."
        )
    n_pos = int(mask.sum())
    n_neg = mask.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"detection AUC needs both flipped and clean points, got {n_pos} flipped and "
            f"{n_neg} clean."
        )
    ranks = rank_average(values)
    u = ranks[mask].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
