"""Scoring helpers of ``infl_array.quality`` against scipy, hand-computed values and bad input."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import infl_array as ia
from infl_array.quality import (
    LooCorrelation,
    detection_auc,
    held_out_choice,
    lds,
    lds_bootstrap,
    lds_per_test,
    loo_correlation,
    predicted_subset_outputs,
    rank_average,
    subset_mask,
)

N_TEST, N_TRAIN, N_SUB = 7, 30, 25


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(N_TEST, N_TRAIN))
    masks = rng.random((N_SUB, N_TRAIN)) < 0.5
    outputs = masks @ scores.T + rng.normal(scale=2.0, size=(N_SUB, N_TEST))
    return scores, masks, outputs


# ---------------------------------------------------------------------------------- ranks
@pytest.mark.parametrize("seed", range(4))
def test_rank_average_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=(12, 6)).astype(np.float64)  # many ties
    np.testing.assert_array_equal(rank_average(x, 0), stats.rankdata(x, axis=0))
    np.testing.assert_array_equal(rank_average(x, 1), stats.rankdata(x, axis=1))
    np.testing.assert_array_equal(rank_average(x[:, 0]), stats.rankdata(x[:, 0]))


def test_rank_average_by_hand():
    np.testing.assert_array_equal(rank_average([3.0, 1.0, 3.0, 2.0, 3.0]), [4, 1, 4, 2, 4])


# ---------------------------------------------------------------------------------- LDS
def test_lds_per_test_matches_scipy(problem):
    scores, masks, outputs = problem
    predicted = masks.astype(np.float64) @ scores.T
    expected = [stats.spearmanr(predicted[:, i], outputs[:, i])[0] for i in range(N_TEST)]
    got = lds_per_test(scores, masks, outputs)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert lds(scores, masks, outputs) == pytest.approx(np.mean(expected), abs=1e-12)


def test_lds_by_hand():
    # test point 0: predicted 3, 4, 5, 6 against outputs ranked 1, 3, 2, 4: 1 - 6*2/60 = 0.8
    scores = np.array([[1.0, 2.0, 4.0]])
    outputs = np.array([[0.1], [0.4], [0.3], [0.6]])
    assert lds(scores, [[0, 1], [2], [0, 2], [1, 2]], outputs) == pytest.approx(0.8, abs=1e-15)


def test_index_subsets_equal_mask(problem):
    scores, masks, outputs = problem
    as_lists = [np.flatnonzero(m) for m in masks]
    np.testing.assert_array_equal(subset_mask(as_lists, N_TRAIN), masks)
    np.testing.assert_array_equal(
        lds_per_test(scores, as_lists, outputs), lds_per_test(scores, masks, outputs)
    )


def test_predicted_outputs_are_subset_sums(problem):
    scores, masks, _ = problem
    got = predicted_subset_outputs(scores, masks)
    expected = np.array([[scores[i, m].sum() for i in range(N_TEST)] for m in masks])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_lds_reads_an_influence_array(problem, tmp_path):
    scores, masks, outputs = problem
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s.zarr",
        lambda rows, cols: scores[rows.start : rows.stop, cols.start : cols.stop],
        shape=scores.shape,
        block_shape=(3, 8),  # bands of 3 test rows: several reads
        dtype="float64",
    )
    assert lds(arr, masks, outputs) == lds(scores, masks, outputs)
    index = np.array([1, 5, 9])
    deltas = np.random.default_rng(1).normal(size=(N_TEST, 3))
    assert loo_correlation(arr, deltas, index) == loo_correlation(scores, deltas, index)


def test_lds_perfect_and_reversed(problem):
    scores, masks, _ = problem
    exact = masks @ scores.T
    assert lds(scores, masks, exact) == pytest.approx(1.0)
    assert lds(-scores, masks, exact) == pytest.approx(-1.0)
    # a monotone transform of the outputs changes nothing (rank correlation)
    assert lds(scores, masks, np.exp(exact / 10)) == pytest.approx(1.0)


def test_lds_leaves_out_undefined_test_points(problem):
    scores, masks, outputs = problem
    outputs = outputs.copy()
    outputs[:, 2] = 1.5  # retraining never changed test point 2
    per = lds_per_test(scores, masks, outputs)
    assert np.isnan(per[2]) and np.isfinite(np.delete(per, 2)).all()
    assert lds(scores, masks, outputs) == pytest.approx(np.mean(np.delete(per, 2)))
    with pytest.raises(ValueError, match="undefined for every test point"):
        lds(scores, masks, np.ones_like(outputs))


def test_lds_bootstrap(problem):
    scores, masks, outputs = problem
    value, spread = lds_bootstrap(scores, masks, outputs, n_boot=100, seed=3)
    assert value == lds(scores, masks, outputs)
    assert 0.0 < spread < 0.3
    assert lds_bootstrap(scores, masks, outputs, n_boot=100, seed=3) == (value, spread)
    # by hand: the resamples a seeded generator draws (a subset drawn twice is a tie)
    predicted = masks.astype(np.float64) @ scores.T
    rng = np.random.default_rng(3)
    boots = []
    for _ in range(100):
        pick = rng.integers(0, N_SUB, size=N_SUB)
        rho = [stats.spearmanr(predicted[pick, i], outputs[pick, i])[0] for i in range(N_TEST)]
        boots.append(np.mean(rho))
    assert spread == pytest.approx(np.std(boots, ddof=1), abs=1e-12)


LDS_BAD = [
    ("list of lists", [[1.0]], "InfluenceArray or a numpy array"),
    ("1-D scores", np.ones(N_TRAIN), "must be 2-D"),
    ("empty scores", np.ones((0, N_TRAIN)), "empty"),
    ("wrong mask width", np.ones((N_SUB, N_TRAIN + 1), bool), r"\(n_subsets, n_train=30\)"),
    ("float subsets", [np.array([0.5, 1.0])] * 4, "integer train indices"),
    ("index out of range", [np.array([0, N_TRAIN])] * 4, r"outside \[0, 30\)"),
    ("two subsets", np.ones((2, N_TRAIN), bool), "at least 3 subsets"),
    ("outputs transposed", "T", "transposed"),
    ("outputs 1-D", "1d", "must be 2-D"),
    ("outputs NaN", "nan", "non-finite"),
    ("scores NaN", "scores-nan", "non-finite values in test rows"),
]


@pytest.mark.parametrize(("what", "bad", "match"), LDS_BAD, ids=[c[0] for c in LDS_BAD])
def test_lds_bad_input(problem, what, bad, match):
    scores, masks, outputs = problem
    args = [scores, masks, outputs]
    if what.startswith("outputs"):
        args[2] = {"T": outputs.T, "1d": outputs[:, 0], "nan": np.where(outputs > 1, np.nan, 1)}[
            bad
        ]
    elif what == "scores NaN":
        args[0] = np.where(scores > 1, np.nan, scores)
    elif what.endswith("scores") or what == "list of lists":
        args[0] = bad
    else:
        args[1] = bad
    with pytest.raises((ValueError, TypeError, IndexError), match=match):
        lds(*args)


def test_lds_bad_n_boot(problem):
    with pytest.raises(ValueError, match="n_boot must be an integer >= 2"):
        lds_bootstrap(*problem, n_boot=1)


# ---------------------------------------------------------------------------------- LOO
def test_loo_correlation_matches_scipy(problem):
    scores = problem[0]
    rng = np.random.default_rng(5)
    idx = rng.choice(N_TRAIN, size=9, replace=False)
    deltas = -scores[:, idx] / N_TRAIN + rng.normal(scale=0.02, size=(N_TEST, 9))
    total = loo_correlation(scores, deltas, idx)
    pred, act = -scores[:, idx].sum(0), deltas.sum(0)
    assert total.pearson == pytest.approx(stats.pearsonr(pred, act)[0], abs=1e-12)
    assert total.spearman == pytest.approx(stats.spearmanr(pred, act)[0], abs=1e-12)
    assert total.n_test_used == N_TEST
    per = loo_correlation(scores, deltas, idx, per_test=True)
    p = [stats.pearsonr(-scores[i, idx], deltas[i])[0] for i in range(N_TEST)]
    s = [stats.spearmanr(-scores[i, idx], deltas[i])[0] for i in range(N_TEST)]
    assert per == LooCorrelation(pytest.approx(np.mean(p)), pytest.approx(np.mean(s)), N_TEST)


def test_loo_correlation_by_hand():
    # predicted changes -scores[0, [0, 1, 2]] = (-3, -1, 2) against measured (-1, 0, 1):
    # centred (-7/3, -1/3, 8/3) and (-1, 0, 1): Pearson 5 / sqrt(114/9 * 2) = 15 / sqrt(228)
    scores = np.array([[3.0, 1.0, -2.0, 0.5]])
    r = loo_correlation(scores, [[-1.0, 0.0, 1.0]], [0, 1, 2])
    assert r.pearson == pytest.approx(15 / np.sqrt(228), abs=1e-14)
    assert r.spearman == pytest.approx(1.0, abs=1e-14)
    assert r.n_test_used == 1


def test_loo_sign_convention():
    # removing a helpful point (positive score) lowers the output: deltas of opposite sign
    scores = np.array([[3.0, 1.0, -2.0, 0.5]])
    deltas = np.array([[-0.75, 0.5, -0.125]])
    r = loo_correlation(scores, deltas, np.array([0, 2, 3]))
    assert r.pearson == pytest.approx(1.0) and r.spearman == pytest.approx(1.0)


LOO_BAD = [
    ("float indices", dict(train_indices=np.array([0.0, 1.0, 2.0])), TypeError, "integer"),
    ("two removed", dict(train_indices=np.array([0, 1])), ValueError, "at least 3"),
    ("index too large", dict(train_indices=np.array([0, 1, N_TRAIN])), IndexError, "lie in"),
    ("negative index", dict(train_indices=np.array([-1, 1, 2])), IndexError, "lie in"),
    ("repeated", dict(train_indices=np.array([1, 1, 2])), ValueError, "repeated"),
    ("deltas shape", dict(loo_deltas=np.zeros((N_TEST, 4))), ValueError, r"\(n_test, n_removed\)"),
    ("deltas inf", dict(loo_deltas=np.full((N_TEST, 3), np.inf)), ValueError, "non-finite"),
    ("deltas constant", dict(loo_deltas=np.ones((N_TEST, 3))), ValueError, "undefined"),
]


@pytest.mark.parametrize(("what", "kw", "exc", "match"), LOO_BAD, ids=[c[0] for c in LOO_BAD])
def test_loo_bad_input(problem, what, kw, exc, match):
    args = {
        "scores": problem[0],
        "loo_deltas": np.random.default_rng(0).normal(size=(N_TEST, 3)),
        "train_indices": np.array([0, 1, 2]),
    }
    args.update(kw)
    with pytest.raises(exc, match=match):
        loo_correlation(**args)


# ---------------------------------------------------------------------------------- detection
def test_detection_auc_by_hand():
    # flipped 0.9 beats all 2 clean, flipped 0.3 beats 0.1 only: (2 + 1) / (2 * 2)
    assert detection_auc([0.9, 0.1, 0.5, 0.3], [True, False, False, True]) == 0.75
    assert detection_auc([1.0, 1.0, 1.0], [True, False, False]) == 0.5  # ties count one half
    assert detection_auc([5.0, 1.0, 2.0], [True, False, False]) == 1.0
    assert detection_auc([0.0, 1.0, 2.0], [True, False, False]) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_detection_auc_matches_mann_whitney(seed):
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=200), 1)  # ties
    mask = rng.random(200) < 0.1
    u = stats.mannwhitneyu(values[mask], values[~mask]).statistic
    assert detection_auc(values, mask) == pytest.approx(u / (mask.sum() * (~mask).sum()))


def test_detection_auc_reads_array_like(tmp_path):
    values = np.array([0.9, 0.1, 0.5, 0.3])
    arr = ia.InfluenceArray.from_function(
        tmp_path / "s.zarr",
        lambda rows, cols: np.broadcast_to(values[cols.start : cols.stop], (len(rows), len(cols))),
        shape=(1, 4),
        block_shape=(1, 2),
        dtype="float64",
    )
    assert detection_auc(arr[0], np.array([True, False, False, True])) == 0.75


DETECT_BAD = [
    ("int mask", [0.1, 0.2, 0.3], [1, 0, 0], TypeError, "must be boolean"),
    ("shape", [0.1, 0.2, 0.3], [True, False], ValueError, "must match"),
    ("no flipped", [0.1, 0.2], [False, False], ValueError, "0 flipped"),
    ("no clean", [0.1, 0.2], [True, True], ValueError, "0 clean"),
    ("2-D", [[0.1, 0.2]], [[True, False]], ValueError, "must be 1-D"),
    ("nan", [np.nan, 0.2], [True, False], ValueError, "non-finite"),
    ("text", ["a", "b"], [True, False], TypeError, "real numbers"),
]


@pytest.mark.parametrize(
    ("what", "values", "mask", "exc", "match"), DETECT_BAD, ids=[c[0] for c in DETECT_BAD]
)
def test_detection_auc_bad_input(what, values, mask, exc, match):
    with pytest.raises(exc, match=re.compile(match)):
        detection_auc(values, np.asarray(mask))


def test_importing_quality_does_not_import_torch():
    code = "import sys, infl_array.quality; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------ held-out choice
def _retrained(truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.random((40, truth.shape[1])) < 0.5
    return masks, masks @ truth.T


def test_held_out_choice_picks_the_candidate_that_predicts_retraining() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(8, 30))
    masks, outputs = _retrained(truth, 1)
    noisy = truth + 3 * rng.normal(size=truth.shape)
    choice = held_out_choice({0.1: noisy, 1.0: truth}, masks, outputs)
    assert choice.chosen == (1.0, 1.0)
    assert choice.held_out == pytest.approx(1.0)
    assert choice.lds[1.0] == pytest.approx(1.0)
    assert choice.lds[0.1] == pytest.approx(lds(noisy, masks, outputs))


def test_held_out_choice_is_not_inflated_by_choosing() -> None:
    # each candidate is right on one half of the test points only: choosing on one half and
    # scoring on the other must not credit either with its good half
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(10, 30))
    masks, outputs = _retrained(truth, 3)
    even, odd = truth.copy(), truth.copy()
    even[1::2] = rng.normal(size=even[1::2].shape)
    odd[0::2] = rng.normal(size=odd[0::2].shape)
    choice = held_out_choice({"even": even, "odd": odd}, masks, outputs)
    assert choice.chosen == ("even", "odd")
    best_in_sample = max(choice.lds.values())
    assert best_in_sample > 0.5
    assert choice.held_out < best_in_sample - 0.3


def test_held_out_choice_refuses_bad_candidates() -> None:
    masks, outputs = _retrained(np.ones((4, 10)), 0)
    with pytest.raises(ValueError, match="non-empty mapping"):
        held_out_choice({}, masks, outputs)
    with pytest.raises(ValueError, match="non-empty mapping"):
        held_out_choice([np.ones((4, 10))], masks, outputs)  # type: ignore[arg-type]
    one_point_masks, one_point_outputs = _retrained(np.ones((1, 10)), 0)
    with pytest.raises(ValueError, match="at least 2"):
        held_out_choice({0: np.arange(10.0)[None]}, one_point_masks, one_point_outputs)
