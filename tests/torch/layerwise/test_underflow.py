"""Products of tiny float32 factors: row normalization keeps them out of the subnormal range.

The speed effect (a product of values around 1e-20 runs ~150x slower on x86 without it) is a
benchmark (``benchmarks/micro/ekfac_product_micro.py --tiny``); here: the normalization is exact up
to the trimmed entries, EkfacInfluence's product of tiny factors is accurate row by row (it
loses precision to subnormals without it), and the test side is normalized once per test
factors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from models import CE, REG, cnn_data, small_cnn, trained_cnn

import infl_array.torch.layerwise.ekfac_products as ekfac_module
import infl_array.torch.layerwise.underflow as underflow
from infl_array.engine.cache import BoundedLru
from infl_array.torch import EkfacInfluence
from infl_array.torch.layerwise.underflow import TRIM_BITS, normalized_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F32 = torch.float32  # explicit: another test module sets torch's default dtype to float64
ROOT = Path(__file__).resolve().parents[3]


def test_normalized_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    f = (
        torch.randn(6, 50, generator=gen, dtype=F32)
        * torch.tensor([1, 1e-20, 1e-35, 1e-42, 0, 3e30], dtype=F32)[:, None]
    )
    f[0, :5] = 0.0
    f[0, 5] = 1e-30  # 1e-30 of its row: trimmed
    g, scale = normalized_rows(f[:, ::2])  # strided input
    assert g.is_contiguous() and g.dtype == torch.float32 and scale.dtype == torch.float32
    kept = g != 0
    back = g * scale[:, None]
    torch.testing.assert_close(back[kept], f[:, ::2][kept], rtol=0, atol=0)  # powers of two
    amax = g.abs().amax(1)
    nonzero = torch.tensor([True, True, True, True, False, True])  # row 4 is all zeros
    assert ((amax >= 0.5) & (amax < 1))[nonzero].all()  # every other row: largest in [0.5, 1)
    assert float(scale[4]) == 1.0 and not g[4].any()  # a zero row
    small = g[kept].abs().min()
    assert float(small) >= 2.0**-TRIM_BITS  # no product of two entries can go subnormal
    assert float(small) ** 2 >= torch.finfo(torch.float32).tiny
    assert normalized_rows(f[:2].bfloat16())[0].dtype == torch.bfloat16
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        normalized_rows(f.double())
    assert normalized_rows(torch.zeros(3, 0, dtype=F32))[1].tolist() == [1.0, 1.0, 1.0]


NORMALIZE = """
import json, resource, torch
from infl_array.torch.layerwise.underflow import normalized_rows
from infl_array.engine.allocator import hold_mmap_threshold
hold_mmap_threshold()
f = torch.empty(64, 1 << 18).normal_().mul_(1e-20)  # 64 MiB, no temporary copy
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
g, scale = normalized_rows(f[:, : (1 << 18) - 1])  # a column slice, as a layer's columns are
print(json.dumps({"grown": peak() - before, "out": g.numel() * g.element_size()}))
"""


def test_normalizing_rows_takes_its_result_and_chunks_only() -> None:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", NORMALIZE], capture_output=True, text=True, env=environ, check=True
    )
    grown, out = json.loads(done.stdout).values()
    # the result (64 MiB) and a chunk's temporaries (8 MiB rows: an abs and a mask); the whole
    # matrix at once took three more copies (about 256 MiB)
    assert grown <= out + (24 << 20), (grown >> 20, out >> 20)


def test_normalized_rows_is_the_same_in_chunks_of_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(7, 40, generator=gen, dtype=F32) * 1e-25
    whole = normalized_rows(f[:, 1:])
    monkeypatch.setattr(underflow, "CHUNK_BYTES", 3 * 39 * 4)  # three rows at a time
    chunked = normalized_rows(f[:, 1:])
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked, strict=True))


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    train, test = cnn_data(40, 0), cnn_data(7, 1)
    model = trained_cnn(small_cnn(), *train).float()
    x, y = train
    infl = EkfacInfluence(model, CE, REG, update_diagonal=True, fisher_type="empirical")
    infl.fit((x.float(), y))
    test_f = infl.test_factors(test[0].float(), test[1])
    train_f = infl.train_factors(x.float(), y)
    # the compact (Linear) layers only: the convolutions' columns are a plain product
    test_f[:, : -(infl.layers[-2].n_params + infl.layers[-1].n_params)] = 0
    train_f[:, : -(infl._train_width(2) + infl._train_width(3))] = 0
    # every part of largest entry 1 first
    test_f = test_f / test_f.abs().amax(1, keepdim=True)
    for i, _, train in list(infl._layer_parts(test_f, train_f))[2:]:
        g, a = infl._split_compact(i, train)  # output gradients, inputs
        g /= g.abs().amax(1, keepdim=True)
        a /= a.abs().amax(1, keepdim=True)
        # every third train row: tiny inputs, large output gradients
        g[::3] *= 1e10
        a[::3] *= 1e-20
    # tiny test gradients (a confident model): T @ a goes below float32's normal range
    # (1.2e-38) where the influences (down to ~1e-30) do not
    test_f = test_f * torch.tensor([1, 1e-20, 1e-15, 1, 3e-18, 1, 1e-19], dtype=F32)[:, None]
    return {"infl": infl, "test": test_f, "train": train_f}


def test_tiny_factors_product_is_accurate(single: dict[str, Any]) -> None:
    infl, test_f, train_f = single["infl"], single["test"], single["train"]
    assert all(infl._compact[-2:]) and test_f.dtype == torch.float32
    got = infl.factor_product(test_f, train_f)
    assert got.dtype == torch.float32
    expected = infl.factor_product(test_f.double(), train_f.double())  # no underflow in float64
    for r in range(test_f.shape[0]):
        for cols in (slice(0, None, 3), [c for c in range(40) if c % 3]):  # tiny, normal train rows
            e, o = expected[r, cols], got[r, cols].double()
            assert float((o - e).abs().max()) <= 1e-5 * float(e.abs().max()), (r, cols)


def test_test_side_normalized_once_per_test_factors(
    single: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    infl, test_f, train_f = single["infl"], single["test"].clone(), single["train"]
    calls: list[int] = []
    original = ekfac_module.normalized_rows

    def counting(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(f.shape[0])
        return original(f)

    monkeypatch.setattr(ekfac_module, "normalized_rows", counting)
    first = infl.factor_product(test_f, train_f[:20])
    n_test = test_f.shape[0]
    assert calls.count(n_test) == 2  # the two compact layers' test columns
    infl.factor_product(test_f, train_f[20:])
    assert calls.count(n_test) == 2  # kept for the same test factors
    test_f[0] *= 2  # changed in place: normalized again, and the result follows
    again = infl.factor_product(test_f, train_f[:20])
    assert calls.count(n_test) == 4
    torch.testing.assert_close(again[0], 2 * first[0])
    torch.testing.assert_close(again[1:], first[1:])
    infl.factor_product(test_f.clone(), train_f[:20])  # other test factors
    assert calls.count(n_test) == 6
    # too large for half the memory budget: used as they are
    small = EkfacInfluence(infl.model, CE, REG, memory_budget=200, fisher_type="empirical")
    small.__dict__.update({k: v for k, v in infl.__dict__.items() if k != "budget"})
    small.memory_budget = 200
    small._normalized = ekfac_module._NormalizedTest()
    before = calls.count(n_test)
    small.factor_product(test_f, train_f[:1])
    assert calls.count(n_test) == before


def test_normalized_test_columns_are_held_before_they_are_made(
    single: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    infl, test_f, train_f = single["infl"], single["test"].clone(), single["train"]
    budget = infl.budget
    held_then: list[tuple[int, int]] = []
    original = ekfac_module.normalized_rows

    def watching(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if f.shape[0] == test_f.shape[0]:
            held = budget.holders()
            held_then.append(
                (held.get(ekfac_module.NORMALIZED, 0), held.get(ekfac_module.NORMALIZED_ONCE, 0))
            )
        return original(f)

    monkeypatch.setattr(ekfac_module, "normalized_rows", watching)
    infl._normalized.clear()
    expected = infl.factor_product(test_f, train_f)
    n, widths = test_f.shape[0], [infl.layers[i].n_params for i in (-2, -1)]
    first, second = (n * (w + 1) * 4 for w in widths)  # the columns and their scales
    assert held_then == [(first, 0), (first + second, 0)]  # kept, held before they were made
    # no room to keep them: a cache gives bytes back for a copy held while the product runs
    infl._normalized.clear()
    held_then.clear()
    cache = BoundedLru(budget.total, lambda v: int(v), budget, "a cache")
    cache.put("all", budget.available - budget.headroom)
    got = infl.factor_product(test_f, train_f)
    assert held_then[0] == (0, first) and sum(held_then[1]) == second  # kept where room is back
    assert ekfac_module.NORMALIZED_ONCE not in budget.holders()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # no room at all (200 B left for the product's working space): used as they are, no copy
    infl._normalized.clear()
    held_then.clear()
    with budget.hold(budget.available + cache.held_bytes - 200, "everything else"):
        infl.factor_product(test_f, train_f)
    assert held_then == []


def test_pickled_model_starts_without_the_cache(single: dict[str, Any]) -> None:
    import pickle

    infl, test_f, train_f = single["infl"], single["test"], single["train"]
    expected = infl.factor_product(test_f, train_f)  # fills the cache
    copy = pickle.loads(pickle.dumps(infl))  # as sent to fill workers
    assert copy._normalized._of is None
    torch.testing.assert_close(copy.factor_product(test_f, train_f), expected, rtol=0, atol=0)
