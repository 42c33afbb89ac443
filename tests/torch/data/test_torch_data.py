"""Data normalisation (``infl_array.torch.data.views``) and its use by the backends."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from infl_array.torch import CgInfluence, DirectInfluence
from infl_array.torch.data import views as tdata
from infl_array.torch.data.views import as_indexed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PairDataset(Dataset):
    """A generic map-style dataset over numpy arrays, items ``(x_i, y_i)`` as tensors."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.x[i]), torch.tensor(self.y[i])


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(2), torch.tensor(0)


def _arrays(n: int = 23, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, size=n)


def _forms(x: np.ndarray, y: np.ndarray) -> dict[str, object]:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return {
        "tuple_tensors": (xt, yt),
        "tuple_numpy": (x, y),
        "tensor_dataset": TensorDataset(xt, yt),
        "generic_dataset": PairDataset(x, y),
        "loader_tensor_dataset": DataLoader(TensorDataset(xt, yt), batch_size=5, shuffle=True),
        "loader_generic": DataLoader(PairDataset(x, y), batch_size=4),
    }


def test_every_form_takes_the_same_batches():
    x, y = _arrays()
    idx = np.array([5, 0, 22, 7])
    for name, form in _forms(x, y).items():
        data = as_indexed(form)
        assert len(data) == 23, name
        xb, yb = data.take(idx)
        np.testing.assert_array_equal(xb.numpy(), x[idx], err_msg=name)
        np.testing.assert_array_equal(yb.numpy(), y[idx], err_msg=name)
        batches = list(data.batches(10))
        assert [b[0].shape[0] for b in batches] == [10, 10, 3], name
        np.testing.assert_array_equal(torch.cat([b[0] for b in batches]).numpy(), x)
        xr, _ = data.take(range(3, 6))
        np.testing.assert_array_equal(xr.numpy(), x[3:6])


def test_loader_batch_size_is_kept_as_hint():
    x, y = _arrays()
    forms = _forms(x, y)
    assert as_indexed(forms["loader_generic"]).batch_size == 4
    assert as_indexed(forms["loader_tensor_dataset"]).batch_size == 5
    assert as_indexed(forms["tuple_numpy"]).batch_size is None


def test_every_form_gives_identical_factors():
    x, y = _arrays()
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()  # convex loss: H + lambda*Id positive definite for CG
    ref = None
    for name, form in _forms(x, y).items():
        for cls in (DirectInfluence, CgInfluence):
            kwargs: dict[str, Any] = {"rtol": 1e-10, "atol": 0.0} if cls is CgInfluence else {}
            inf = cls(model, F.cross_entropy, regularization=0.1, **kwargs).fit(form)
            tf = inf.test_factors(x[:6], y[:6])
            tr = inf.train_factors(x, y)
            if ref is None:
                ref = (tf, tr)
            assert torch.allclose(tf, ref[0], rtol=1e-9, atol=1e-12), (name, cls.__name__)
            assert torch.allclose(tr, ref[1], rtol=1e-12, atol=1e-15), name


def test_fingerprint_equal_for_equal_data_in_new_objects():
    x, y = _arrays()
    for name, form in _forms(x, y).items():
        again = _forms(x.copy(), y.copy())[name]
        assert as_indexed(form).fingerprint() == as_indexed(again).fingerprint(), name
    fp = as_indexed((x, y)).fingerprint()
    assert len(fp) == 64
    assert as_indexed(TensorDataset(torch.from_numpy(x), torch.from_numpy(y))).fingerprint() == fp


@pytest.mark.parametrize(
    "name",
    ["tuple_tensors", "tuple_numpy", "tensor_dataset", "generic_dataset", "loader_generic"],
)
def test_fingerprint_changes_with_data(name):
    x, y = _arrays()
    fp = as_indexed(_forms(x, y)[name]).fingerprint()
    x2 = x.copy()
    x2[0, 1] += 1e-9  # row 0 is always sampled
    assert as_indexed(_forms(x2, y)[name]).fingerprint() != fp
    y2 = y.copy()
    y2[-1] = (y2[-1] + 1) % 3
    assert as_indexed(_forms(x, y2)[name]).fingerprint() != fp
    assert as_indexed(_forms(x[:-1], y[:-1])[name]).fingerprint() != fp
    assert as_indexed(_forms(x.astype(np.float32), y)[name]).fingerprint() != fp


def test_small_tensor_fingerprint_hashes_every_row():
    x, y = _arrays(n=500)
    fp = as_indexed((x, y)).fingerprint()
    x2 = x.copy()
    x2[250, 0] += 1.0  # not an evenly spaced sample row; the full hash still sees it
    assert as_indexed((x2, y)).fingerprint() != fp


def test_large_tensor_fingerprint_samples_rows(monkeypatch):
    """Above the size limit only length, shapes/dtypes and sampled rows are hashed."""
    monkeypatch.setattr(tdata, "FULL_HASH_LIMIT_BYTES", 1024)
    n = 1000
    x, y = _arrays(n=n)
    fp = as_indexed((x, y)).fingerprint()
    sampled = set(tdata.sample_indices(n).tolist())
    assert {0, n - 1} <= sampled and 60 <= len(sampled) <= 66
    unsampled = next(i for i in range(n) if i not in sampled)
    x2 = x.copy()
    x2[unsampled] += 1.0
    assert as_indexed((x2, y)).fingerprint() == fp  # documented: sampled rows only
    x3 = x.copy()
    x3[n - 1] += 1.0
    assert as_indexed((x3, y)).fingerprint() != fp
    assert as_indexed((x[:-1], y[:-1])).fingerprint() != fp


def test_generic_dataset_fingerprint_reads_only_a_sample():
    x, y = _arrays(n=1000)

    class Counting(PairDataset):
        reads = 0

        def __getitem__(self, i: int):
            Counting.reads += 1
            return super().__getitem__(i)

    data = as_indexed(Counting(x, y))
    Counting.reads = 0
    data.fingerprint()
    assert Counting.reads <= 66
    # the type name is part of the fingerprint
    assert data.fingerprint() != as_indexed(PairDataset(x, y)).fingerprint()


def test_iterable_dataset_rejected():
    with pytest.raises(TypeError, match="random access"):
        as_indexed(Stream())
    with pytest.raises(TypeError, match="random access"):
        as_indexed(DataLoader(Stream(), batch_size=2))


@pytest.mark.parametrize(
    ("data", "exc", "match"),
    [
        ((np.zeros((3, 2)), np.zeros(4)), ValueError, "x has 3 samples but y has 4"),
        ((np.zeros((0, 2)), np.zeros(0)), ValueError, "empty"),
        ((np.zeros((3, 2)),), ValueError, r"must be \(x, y\)"),
        ((np.zeros((3, 2)), [0, 1, 2]), TypeError, "torch tensor or numpy array"),
        ("not data", TypeError, "must be a tuple"),
        (TensorDataset(torch.zeros(3)), ValueError, "TensorDataset of 1 tensors"),
    ],
)
def test_bad_data_raise(data, exc, match):
    with pytest.raises(exc, match=match):
        as_indexed(data, name="train_data")


def test_dataset_items_must_be_pairs():
    class Triples(Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            return torch.zeros(2), torch.tensor(0), torch.tensor(1)

    with pytest.raises(TypeError, match=r"\(x, y\) pairs"):
        as_indexed(Triples())


def test_take_checks_indices():
    data = as_indexed(_arrays())
    with pytest.raises(IndexError, match="indices must lie in"):
        data.take([0, 23])
    with pytest.raises(IndexError, match="negative"):
        data.take([-1])
    with pytest.raises(TypeError, match="integer indices"):
        data.take(np.array([0.5]))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        next(data.batches(0))
    assert data.take([])[0].shape == (0, 4)


def test_fit_rejects_bad_data_clearly():
    model = nn.Linear(4, 3).double()
    with pytest.raises(TypeError, match=r"train_data is .*IterableDataset"):
        DirectInfluence(model, F.cross_entropy).fit(Stream())


def test_read_only_numpy_arrays_are_accepted_without_warnings() -> None:
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    y = np.arange(6) % 2
    x.flags.writeable = False
    y.flags.writeable = False
    data = as_indexed((x, y))
    bx, by = data.take(range(2, 5))
    assert torch.equal(bx, torch.as_tensor(x[2:5].copy()))
    assert torch.equal(by, torch.as_tensor(y[2:5].copy()))
