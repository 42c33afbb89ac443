"""Grown data: joined data sets and the fingerprints of their ranges (``append_train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import FeatureFactors
from torch.utils.data import ConcatDataset, Dataset

import infl_array as ia
from infl_array.torch.data.spans import JoinedData, check_joinable, joined, span_fingerprint
from infl_array.torch.data.views import DatasetData, TensorData, as_indexed


class Points(Dataset):
    """A map-style dataset of ``(x, y)`` items from a list."""

    def __init__(self, xs: list[list[float]]) -> None:
        self.xs = xs

    def __len__(self) -> int:
        return len(self.xs)

    def __getitem__(self, i: int) -> Any:
        return torch.tensor(self.xs[i], dtype=torch.float64), torch.tensor(0)


def rows(n: int, start: int = 0) -> list[list[float]]:
    return [[float(start + i), float((start + i) % 3), 1.0] for i in range(n)]


def test_joined_tensors_are_the_concatenated_tensors() -> None:
    a, b = as_indexed((np.ones((3, 2)), np.zeros(3))), as_indexed((2 * np.ones((2, 2)), np.ones(2)))
    both = joined(a, b)
    whole = as_indexed(
        (np.concatenate([np.ones((3, 2)), 2 * np.ones((2, 2))]), np.r_[0.0, 0, 0, 1, 1])
    )
    assert isinstance(both, TensorData) and both.fingerprint() == whole.fingerprint()
    assert span_fingerprint(whole, range(3, 5)) == b.fingerprint()
    assert span_fingerprint(whole, range(0, 3)) == a.fingerprint()


def test_datasets_join_and_their_ranges_fingerprint_as_given_alone() -> None:
    first, more = DatasetData(Points(rows(70))), DatasetData(Points(rows(5, 70)))
    both = joined(first, more)
    assert len(both) == 75 and both.take([72, 1])[0][:, 0].tolist() == [72.0, 1.0]
    grown = DatasetData(Points(rows(75)))
    assert span_fingerprint(grown, range(70, 75)) == more.fingerprint()
    assert span_fingerprint(grown, range(70)) == first.fingerprint()
    assert span_fingerprint(grown, range(69, 74)) != more.fingerprint()


def test_mixed_parts_take_from_each_part_in_order() -> None:
    tensors = TensorData(torch.arange(3.0).reshape(3, 1), torch.zeros(3))
    dataset = DatasetData(Points([[10.0], [11.0]]))
    both = joined(tensors, dataset)
    assert isinstance(both, JoinedData)
    x, _ = both.take(np.array([4, 0, 3, 2]))
    assert x[:, 0].tolist() == [11.0, 0.0, 10.0, 2.0]
    assert span_fingerprint(both, range(3, 5)) == dataset.fingerprint()
    assert span_fingerprint(both, range(2, 4)) == span_fingerprint(both, range(2, 4))
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 4\]"):
        both.take([5])


@pytest.mark.parametrize(
    ("appended", "match"),
    [
        ((np.zeros((2, 4)), np.zeros(2)), r"x has shape \(4,\)"),
        ((np.zeros((2, 3), np.float32), np.zeros(2)), "dtype torch.float32"),
        ((np.zeros((2, 3)), np.zeros((2, 2))), r"y has shape \(2,\)"),
    ],
)
def test_appended_samples_must_look_like_the_data(appended: Any, match: str) -> None:
    data = as_indexed((np.zeros((3, 3)), np.zeros(3)), "train")
    with pytest.raises(ValueError, match=match):
        check_joinable(data, as_indexed(appended, "train"), "train")


def test_a_dataset_store_grows_and_reopens_with_the_grown_dataset(tmp_path: Path) -> None:
    test = Points(rows(4, 100))
    arr = ia.InfluenceArray.create(
        tmp_path / "s", FeatureFactors(), test=test, train=Points(rows(6)), block_shape=(2, 4)
    )
    arr.fill(progress=False)
    arr.append_train(Points(rows(3, 6)))
    expected = np.array(rows(4, 100)) @ np.array(rows(9)).T
    np.testing.assert_array_equal(arr[:], expected)
    again = ia.open(tmp_path / "s", FeatureFactors(), test=test, train=Points(rows(9)))
    np.testing.assert_array_equal(again[:], expected)
    with pytest.raises(ia.StaleCacheError, match=r"train segment 1 \(6:9\)"):
        ia.open(tmp_path / "s", FeatureFactors(), test=test, train=Points(rows(9)[::-1]))


def test_a_grown_dataset_store_reopens_with_the_parts_concatenated(tmp_path: Path) -> None:
    """The grown data given as torch's ConcatDataset of the parts (as appended) are checked
    part by part: each part fingerprints as it did given alone."""
    test, train, more = Points(rows(4, 100)), Points(rows(6)), Points(rows(3, 6))
    arr = ia.InfluenceArray.create(
        tmp_path / "s", FeatureFactors(), test=test, train=train, block_shape=(2, 4)
    )
    arr.append_train(more)
    again = ia.open(tmp_path / "s", FeatureFactors(), test=test, train=ConcatDataset([train, more]))
    np.testing.assert_array_equal(again[:], np.array(rows(4, 100)) @ np.array(rows(9)).T)
    other = ConcatDataset([train, Points(rows(3, 7))])
    with pytest.raises(ia.StaleCacheError, match=r"train segment 1 \(6:9\)"):
        ia.open(tmp_path / "s", FeatureFactors(), test=test, train=other)
