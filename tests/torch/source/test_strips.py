"""Tests of infl_array.torch.source.strips: one product per strip of a tile's blocks."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import infl_array as ia
from infl_array.torch.source.memo import FactorMemo
from infl_array.torch.source.source import make_block_source
from infl_array.torch.source.strips import Strips

N_TEST, N_TRAIN, WIDTH = 23, 31, 40


class CountingProduct:
    """A protocol model declaring ``factor_product``; records the shape of every product."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.a = torch.randn(WIDTH, WIDTH, generator=gen, dtype=torch.float64)
        self.shapes: list[tuple[int, int]] = []

    def test_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y[:, None]) @ self.a

    def train_factors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * y[:, None]

    def factor_product(self, test_f: torch.Tensor, train_f: torch.Tensor) -> torch.Tensor:
        self.shapes.append((test_f.shape[0], train_f.shape[0]))
        return test_f @ train_f.T

    def influence_config(self) -> dict[str, Any]:
        return {"backend": "CountingProduct", "a": self.a.tolist()}


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, WIDTH, generator=gen, dtype=torch.float64), torch.randn(
        n, generator=gen, dtype=torch.float64
    )


@pytest.fixture
def data() -> dict[str, Any]:
    return {"test": _data(N_TEST, 1), "train": _data(N_TRAIN, 2)}


def _unbatched(data: dict[str, Any], block_shape: tuple[int, int]) -> np.ndarray:
    """Every block computed alone (no tile declared), from the same factors: the reference."""
    src = make_block_source(CountingProduct(), data["test"], data["train"])
    src.prefetch(rows=range(0, N_TEST))  # test factors as a fill computes them: in one call
    out = np.empty((N_TEST, N_TRAIN))
    for i in range(0, N_TEST, block_shape[0]):
        for j in range(0, N_TRAIN, block_shape[1]):
            rows, cols = (
                range(i, min(i + block_shape[0], N_TEST)),
                range(j, min(j + block_shape[1], N_TRAIN)),
            )
            out[rows.start : rows.stop, cols.start : cols.stop] = src.compute_block(rows, cols)
    return out


def assert_same_products(batched: np.ndarray, alone: np.ndarray) -> None:
    """The same float64 inner products; BLAS may round a row's sum differently (last bit) by
    where the row falls in the product (its kernel's remainder rows)."""
    np.testing.assert_allclose(batched, alone, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_fill_takes_one_product_per_column_group_of_a_tile(
    tmp_path: Path, data: dict[str, Any], dtype: str
) -> None:
    model = CountingProduct()
    arr = ia.InfluenceArray.create(
        tmp_path / "s", model, test=data["test"], train=data["train"], block_shape=(5, 10),
        dtype=dtype,
    )  # fmt: skip
    arr.fill(progress=False)
    # one tile (the test factors fit the budget) and one column group (31 train points): one
    # product for all 23 rows and all 4 block columns
    assert model.shapes == [(23, 31)]
    alone = _unbatched(data, (5, 10))
    if dtype == "float64":
        assert_same_products(np.asarray(arr), alone)
    else:  # the float64 factors' products, rounded to float32 when stored
        np.testing.assert_allclose(np.asarray(arr), alone, rtol=2.0**-23, atol=1e-12)


def test_tiles_cut_by_the_budget_take_one_product_per_tile_and_column(
    tmp_path: Path, data: dict[str, Any]
) -> None:
    model = CountingProduct()
    # two columns of train factors and 10 test rows of factors per tile; strips of 10 x 10
    # float64 values fit a quarter of it
    budget = 2 * 10 * WIDTH * 8 + 10 * WIDTH * 8
    arr = ia.InfluenceArray.create(
        tmp_path / "s", model, test=data["test"], train=data["train"], block_shape=(5, 10),
        dtype="float64", factor_budget_bytes=budget,
    )  # fmt: skip
    arr.fill(progress=False)
    rows = sorted({n for n, _ in model.shapes})
    assert rows == [3, 10]  # tiles of block rows 0-1, 2-3 (one strip each) and 4 (3 rows)
    assert len(model.shapes) == 3 * 4
    assert_same_products(np.asarray(arr), _unbatched(data, (5, 10)))


def test_strips_are_cut_to_their_byte_bound() -> None:
    strips = Strips(budget_bytes=4 * 2 * 5 * 10 * 8)  # a strip: 2 block rows of 5 x 10 float64
    strips.begin_tile([range(0, 23)], block_rows=5)
    made: list[range] = []

    def product(rows: range, cols: range) -> torch.Tensor:
        made.append(rows)
        return torch.arange(rows.start, rows.stop, dtype=torch.float64)[:, None].expand(-1, 10)

    for i in range(0, 23, 5):
        block = strips.block(range(i, min(i + 5, 23)), range(0, 10), product)
        assert block is not None and block[:, 0].tolist() == list(range(i, min(i + 5, 23)))
    assert made == [range(0, 10), range(10, 20), range(20, 23)]
    assert strips.products == 3
    # rows not aligned to the declared block rows, or outside the tile: computed alone
    assert strips.block(range(2, 7), range(0, 10), product) is None
    assert strips.block(range(0, 5), range(0, 10), product) is not None
    strips.begin_tile([range(0, 5)], block_rows=5)  # one block row: nothing to batch
    assert strips.block(range(0, 5), range(0, 10), product) is None
    assert pickle.loads(pickle.dumps(strips)).block(range(0, 5), range(0, 10), product) is None


def test_a_budget_of_zero_computes_every_block_alone(data: dict[str, Any]) -> None:
    model = CountingProduct()
    src = make_block_source(model, data["test"], data["train"], factor_budget_bytes=0)
    src.begin_tile([range(0, 20)], block_rows=5)
    src.compute_block(range(5, 10), range(0, 10))
    assert model.shapes == [(5, 10)]


def test_memo_keeps_a_joined_range_in_place_of_its_blocks() -> None:
    memo = FactorMemo(memory_budget=1 << 20)
    memo.put(("test", 0, 5), torch.zeros(5, 4, dtype=torch.float32))
    memo.put(("test", 5, 10), torch.ones(5, 4, dtype=torch.float32))
    memo.put(("train", 0, 5), torch.ones(5, 4, dtype=torch.float32))
    joined = torch.cat([torch.zeros(5, 4), torch.ones(5, 4)]).to(torch.float32)
    memo.join(("test", 0, 10), joined)
    assert len(memo) == 2 and memo.nbytes == 15 * 4 * 4
    block = memo.get(("test", 5, 10))
    assert block is not None and block.data_ptr() == memo.get(("test", 0, 10)).data_ptr() + 80


def test_a_column_group_is_cut_to_the_strip_bound() -> None:
    strips = Strips(budget_bytes=4 * 10 * 10 * 8)  # a strip: 10 rows x 10 columns of float64
    columns = [range(0, 5), range(5, 10), range(10, 15), range(15, 18)]
    strips.begin_tile([range(0, 10)], block_rows=5, groups=[columns])
    made: list[tuple[range, range]] = []

    def product(rows: range, cols: range) -> torch.Tensor:
        made.append((rows, cols))
        return torch.arange(cols.start, cols.stop, dtype=torch.float64)[None, :].expand(
            len(rows), -1
        )

    for cols in columns:  # column-major, as a tile is computed
        for i in (0, 5):
            block = strips.block(range(i, i + 5), cols, product)
            assert block is not None and block.shape == (5, len(cols))
            assert block[0].tolist() == list(cols) and block.is_contiguous()
    # the whole run against four columns of five does not fit; against two it does
    assert made == [(range(0, 10), range(0, 10)), (range(0, 10), range(10, 18))]
    # a group of one block column is the run's strip of rows, as without groups
    strips.begin_tile([range(0, 10)], block_rows=5, groups=[[range(0, 5)]])
    assert strips.block(range(0, 5), range(0, 5), product) is not None
    assert made[-1] == (range(0, 10), range(0, 5))


def test_blocks_are_copies_unless_the_tile_only_writes_them() -> None:
    strips = Strips(budget_bytes=4 * 10 * 10 * 8)
    made: list[torch.Tensor] = []

    def product(rows: range, cols: range) -> torch.Tensor:
        made.append(torch.arange(len(rows) * len(cols), dtype=torch.float64).reshape(10, 10))
        return made[-1]

    def shares_strip(block: torch.Tensor) -> bool:
        strip = made[-1].untyped_storage()
        return block.untyped_storage().data_ptr() == strip.data_ptr()

    strips.begin_tile([range(0, 10)], block_rows=5)  # blocks may be kept (a read caches them)
    kept = [strips.block(range(i, i + 5), range(0, 10), product) for i in (0, 5)]
    assert all(b is not None and not shares_strip(b) for b in kept)
    strips.begin_tile([range(0, 10)], block_rows=5, blocks_kept=False)  # a fill's tile
    written = [strips.block(range(i, i + 5), range(0, 10), product) for i in (0, 5)]
    assert all(b is not None and shares_strip(b) and b.is_contiguous() for b in written)
    for k, w in zip(kept, written, strict=True):
        assert w is not None and torch.equal(k, w)


def test_a_fill_declares_its_blocks_written_only_and_a_read_kept(
    tmp_path: Path, data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    declared: list[bool] = []
    original = Strips.begin_tile

    def recorded(self: Strips, *args: Any, **kwargs: Any) -> None:
        declared.append(kwargs.get("blocks_kept", args[3] if len(args) > 3 else True))
        original(self, *args, **kwargs)

    monkeypatch.setattr(Strips, "begin_tile", recorded)
    arr = ia.InfluenceArray.create(
        tmp_path / "s", CountingProduct(), test=data["test"], train=data["train"],
        block_shape=(5, 10), dtype="float64",
    )  # fmt: skip
    arr[0:10, 0:20]  # a read computes its missing blocks and caches them
    assert declared and all(declared)
    declared.clear()
    arr.fill(progress=False)
    assert declared and not any(declared)
    assert_same_products(np.asarray(arr), _unbatched(data, (5, 10)))
