"""``create(..., factor_compression=...)``: lossy stored factors, their bound, reopen, top-k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import FeatureFactors, brute_top_k
from hypothesis import given, settings
from hypothesis import strategies as st

import infl_array as ia
from infl_array.engine.top_k import ScanCounts, scan_top_k
from infl_array.storage.factors import FactorStore
from infl_array.storage.meta import Compression
from infl_array.storage.store import InfluenceStore
from infl_array.storage.zarr_compat import lossy_codec_warning_silenced


def features(n: int, width: int, seed: int, scales: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Features away from zero (|x| >= 0.1), rows scaled by ``scales`` (powers of two keep
    the products of rounded features exact in float64)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, width))
    x = np.sign(x) * (0.1 + np.abs(x)) * np.reshape(scales, (-1, 1))
    return x, np.zeros(n)


def stored_factors(path: Path, side: str) -> np.ndarray:
    """Every stored factor block of ``side``, read back through the store's codec."""
    factor_side = FactorStore(InfluenceStore.open(path), 0).side(side)
    n_blocks = -(-factor_side.n // factor_side.block_len)
    return np.concatenate([factor_side.read(b) for b in range(n_blocks)])


def factor_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in (path / "factors").rglob("*") if f.is_file())


def lossy_array(path: Path, keepbits: int | None, **kw: Any) -> tuple[ia.InfluenceArray, Any, Any]:
    test, train = kw.pop("test", features(9, 5, 0)), kw.pop("train", features(23, 5, 1))
    compression = None if keepbits is None else Compression(keepbits=keepbits)
    arr = ia.InfluenceArray.create(
        path,
        FeatureFactors(),
        test=test,
        train=train,
        block_shape=kw.pop("block_shape", (4, 6)),
        factor_compression=compression,
        **kw,
    )
    return arr, test, train


@settings(max_examples=12, deadline=None)
@given(keepbits=st.integers(1, 51), seed=st.integers(0, 2**16), scale=st.integers(-30, 30))
def test_every_stored_factor_is_within_the_stated_relative_bound(
    tmp_path_factory: pytest.TempPathFactory, keepbits: int, seed: int, scale: int
) -> None:
    path = tmp_path_factory.mktemp("fc") / "s"
    train = features(17, 5, seed, 2.0**scale)
    arr, test, _ = lossy_array(path, keepbits, train=train, dtype="float64")
    arr.fill(progress=False)
    bound = Compression(keepbits=keepbits).relative_error_bound
    assert bound == 2.0 ** -(keepbits + 1)
    for side, x in (("train", train[0]), ("test", test[0])):
        got = stored_factors(path, side)
        assert np.all(np.abs(got - x) <= bound * np.abs(x))
    # the matrix is the product of the rounded factors (up to float64 sums at high keepbits)
    rounded_test, rounded_train = stored_factors(path, "test"), stored_factors(path, "train")
    np.testing.assert_allclose(np.asarray(arr), rounded_test @ rounded_train.T, rtol=1e-13)


def test_lossy_factors_take_fewer_bytes_and_lossless_stays_the_default(tmp_path: Path) -> None:
    kw = {"test": features(64, 128, 0), "train": features(256, 128, 1), "block_shape": (64, 128)}
    lossless, _, train = lossy_array(tmp_path / "a", None, **kw)
    lossy, _, _ = lossy_array(tmp_path / "b", 7, **kw)
    for arr in (lossless, lossy):
        arr.top_k(3)  # computes and stores the factors, no matrix block
    assert lossless.meta.factor_compression is None
    np.testing.assert_array_equal(stored_factors(tmp_path / "a", "train"), train[0])
    assert factor_bytes(tmp_path / "b") < 0.5 * factor_bytes(tmp_path / "a")


def test_reopen_uses_the_recorded_compression_and_refuses_another(tmp_path: Path) -> None:
    arr, test, train = lossy_array(tmp_path / "s", 7)
    first = np.asarray(arr)
    assert ia.open(tmp_path / "s").meta.factor_compression == Compression(keepbits=7)
    again = ia.open(tmp_path / "s", FeatureFactors(), test=test, train=train)
    assert again.meta.factor_compression == Compression(keepbits=7)
    same = ia.open(
        tmp_path / "s",
        FeatureFactors(),
        test=test,
        train=train,
        factor_compression=Compression(keepbits=7, cname="zstd"),  # only the rounding counts
    )
    np.testing.assert_array_equal(np.asarray(same), first)
    for other in (Compression(keepbits=9), Compression()):
        with pytest.raises(ia.StaleCacheError, match=r"factor_compression.*store has keepbits=7"):
            ia.open(
                tmp_path / "s", FeatureFactors(), test=test, train=train, factor_compression=other
            )
    lossy_array(tmp_path / "t", None)
    lossless = r"store has keepbits=None \(lossless\), given keepbits=7"
    with pytest.raises(ia.StaleCacheError, match=lossless):
        ia.open(tmp_path / "t", factor_compression=Compression(keepbits=7))


def test_fresh_and_stored_factors_give_the_same_blocks(tmp_path: Path) -> None:
    arr, test, train = lossy_array(tmp_path / "s", 3, dtype="float64")
    fresh = np.asarray(arr)  # factors computed here, then stored
    rounded = Compression(keepbits=3).stored_values
    np.testing.assert_array_equal(fresh, rounded(test[0]) @ rounded(train[0]).T)
    other, _, _ = lossy_array(tmp_path / "t", 3, dtype="float64", factor_disk_budget_bytes=0)
    np.testing.assert_array_equal(np.asarray(other), fresh)  # rounded though not stored
    assert arr.store_report().ok  # the lossy factor arrays decode and pass their checksums
    new = arr.with_test(test, tmp_path / "u")
    assert new.meta.factor_compression == Compression(keepbits=3)
    np.testing.assert_array_equal(np.asarray(new), fresh)


@pytest.mark.parametrize(("axis", "largest"), [(1, True), (1, False), (0, True)])
def test_top_k_with_lossy_factors_is_the_brute_force_of_the_rounded_factors(
    tmp_path: Path, axis: int, largest: bool
) -> None:
    test = features(30, 4, 2, 2.0 ** np.linspace(8, -8, 30).round())
    train = features(60, 4, 3, 2.0 ** np.linspace(8, -8, 60).round())
    arr, _, _ = lossy_array(
        tmp_path / "s", 7, test=test, train=train, block_shape=(5, 6), dtype="float64"
    )
    rounded = Compression(keepbits=7).stored_values
    full = rounded(test[0]) @ rounded(train[0]).T  # exact in float64 (see `features`)
    assert not np.array_equal(full, test[0] @ train[0].T)
    expected_values, expected_indices = brute_top_k(full, 3, axis, largest)
    values, indices = arr.top_k(3, axis=axis, largest=largest)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(values, expected_values)
    tk = arr.top_k_array(3, axis=axis, largest=largest)
    np.testing.assert_array_equal(tk.indices[:], expected_indices.T if axis == 0 else indices)
    # skipping by factor norms, its bound inflated for both roundings, drops no true member
    n = arr.grid_shape[1 - axis]
    counts = ScanCounts()
    found = scan_top_k(arr._engine, 3, axis, largest, range(n), counts, skip=True)
    got = np.concatenate([found[b][1] for b in range(n)])
    np.testing.assert_array_equal(got.T if axis == 0 else got, expected_indices)
    assert counts.blocks_skipped > 0


class HalfFactors(FeatureFactors):
    """Factors in float16, which keepbits does not round."""

    def train_factors(self, x: Any, y: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float16)

    test_factors = train_factors


class SingleFactors(FeatureFactors):
    def train_factors(self, x: Any, y: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    test_factors = train_factors


@pytest.mark.parametrize(
    ("factor_compression", "dtype", "error", "match"),
    [
        (7, "float32", TypeError, r"factor_compression must be None .* got 7\. Pass e\.g\."),
        (
            Compression(keepbits=30),
            "float32",
            ValueError,
            r"keepbits=30 exceeds the 22 mantissa bits of float32 factors of a float32 store; "
            r"use keepbits <= 22",
        ),
    ],
)
def test_bad_factor_compression_is_refused_at_create(
    tmp_path: Path, factor_compression: Any, dtype: str, error: type, match: str
) -> None:
    x = features(4, 2, 0)
    with pytest.raises(error, match=match):
        ia.InfluenceArray.create(
            tmp_path / "s",
            FeatureFactors(),
            test=x,
            train=x,
            dtype=dtype,
            factor_compression=factor_compression,
        )
    with pytest.raises(ValueError, match=r"keepbits must be None \(lossless\) or an int in 1\.\."):
        Compression(keepbits=0)


@pytest.mark.parametrize(
    ("model", "keepbits", "error", "match"),
    [
        (HalfFactors(), 7, TypeError, r"float64 values only, but the test factors of HalfFactors"),
        (SingleFactors(), 40, ValueError, r"keepbits=40 exceeds the 22 mantissa bits of float32"),
    ],
)
def test_factors_keepbits_cannot_round_are_refused_when_computed(
    tmp_path: Path, model: Any, keepbits: int, error: type, match: str
) -> None:
    x = features(4, 2, 0)
    arr = ia.InfluenceArray.create(
        tmp_path / "s",
        model,
        test=x,
        train=x,
        dtype="float64",
        factor_compression=Compression(keepbits=keepbits),
    )
    with pytest.raises(error, match=match):
        arr[0, 0]


def test_appended_train_points_get_the_recorded_rounding(tmp_path: Path) -> None:
    arr, test, train = lossy_array(tmp_path / "s", 5, dtype="float64")
    np.asarray(arr)  # the first segment's factors are stored
    more = features(7, 5, 9)
    arr.append_train(more)
    reopened = ia.open(tmp_path / "s")
    assert reopened.meta.factor_compression == Compression(keepbits=5)
    rounded = Compression(keepbits=5).stored_values
    every = np.concatenate([train[0], more[0]])
    np.testing.assert_array_equal(np.asarray(arr), rounded(test[0]) @ rounded(every).T)


def factor_codecs(path: Path, side: str = "train") -> list[Any]:
    """The codecs zarr records for the stored factor array of ``side``."""
    import zarr

    with lossy_codec_warning_silenced():
        return list(zarr.open_group(path, mode="r")[f"factors/{side}"].metadata.codecs)


def test_lossless_factors_are_bit_shuffled_lz4_with_a_checksum(tmp_path: Path) -> None:
    """Lossless factors: blosc lz4 (level 9) after a bit-shuffle, then a checksum; ``keepbits``
    ones keep the matrix's codec after rounding, without rounding again."""
    arr, _, train = lossy_array(tmp_path / "lossless", None)
    arr.fill(progress=False)
    codecs = factor_codecs(tmp_path / "lossless")
    assert [type(c).__name__ for c in codecs] == ["BytesCodec", "BloscCodec", "Crc32cCodec"]
    blosc = codecs[1]
    assert (blosc.cname.value, blosc.clevel, blosc.shuffle.value) == ("lz4", 9, "bitshuffle")
    np.testing.assert_array_equal(stored_factors(tmp_path / "lossless", "train"), train[0])
    lossy_array(tmp_path / "kb", 7)[0].fill(progress=False)
    names = [type(c).__name__ for c in factor_codecs(tmp_path / "kb")]
    assert "BloscCodec" in names and names[-1] == "Crc32cCodec"
    assert "BitRound" not in names  # rounded once, by the factor cache
    rounded = Compression(keepbits=7).stored_values(train[0])
    np.testing.assert_array_equal(stored_factors(tmp_path / "kb", "train"), rounded)
    with pytest.raises(ValueError, match="'none'"):
        Compression(cname="gzip")  # type: ignore[arg-type]


def test_stores_with_raw_factors_keep_opening_and_reading_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written when lossless factors were stored raw (``cname="none"``): its factor
    arrays keep their recorded codec; a reopened array reads them (nothing recomputed), and a
    damaged raw chunk still fails its checksum."""
    import infl_array.storage.store as store_module

    monkeypatch.setattr(store_module, "LOSSLESS_FACTORS", Compression(cname="none"))
    arr, test, train = lossy_array(tmp_path / "old", None, dtype="float64")
    arr.top_k_array(3).fill(progress=False)  # every factor stored, no matrix block
    monkeypatch.undo()
    codecs = factor_codecs(tmp_path / "old")
    assert [type(c).__name__ for c in codecs] == ["BytesCodec", "Crc32cCodec"]
    reopened = ia.open(tmp_path / "old", FeatureFactors(), test=test, train=train)
    values, indices = reopened.top_k(2)
    expected = brute_top_k(test[0] @ train[0].T, 2, 1, True)
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_allclose(values, expected[0], rtol=1e-12)
    assert reopened.stats.train_factors == 0 and reopened.stats.test_factors == 0
    np.testing.assert_array_equal(stored_factors(tmp_path / "old", "train"), train[0])
    chunk = tmp_path / "old" / "factors" / "train" / "c" / "1" / "0"
    damaged = bytearray(chunk.read_bytes())
    damaged[3] ^= 0x10
    chunk.write_bytes(bytes(damaged))
    with pytest.raises(ia.CorruptBlockError, match="factor block 1"):
        FactorStore(InfluenceStore.open(tmp_path / "old"), 0).side("train").read(1)
