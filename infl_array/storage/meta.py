"""What a store records about itself: shape, block shape, dtype, compression, provenance.

:class:`StoreMeta` is written once, as the group attribute ``"infl_array"``, when a store is
created, and read back by every ``open``. :class:`Compression` describes the codecs of the
stored arrays. This module knows numpy and zarr's codec classes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec

from infl_array.errors import NotAStoreError
from infl_array.version import __version__

__all__ = ["Compression", "StoreMeta", "check_shapes"]

FORMAT_VERSION = 1
SUPPORTED_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Compression:
    """How blocks are compressed.

    ``keepbits=None`` (the default) is lossless: blosc (``cname``, default lz4 at level 5) with
    bit-shuffle. On influence-like float32 data (heavy-tailed, nearly random mantissas) every
    lossless codec measured lands at 1.04-1.16x; lz4 with bit-shuffle is within 1% of zstd's
    ratio and encodes 2-3x faster, so writing keeps up with computing (benchmarks/RESULTS.md).
    An integer ``keepbits`` (1..22 for float32, 1..51 for float64) first rounds each mantissa to
    that many bits (numcodecs BitRound), which bounds the relative error of every value by
    ``2 ** -(keepbits + 1)`` and makes blocks compress much better. A CRC32C checksum is always
    added, so corrupt bytes raise instead of decoding to wrong numbers.
    """

    keepbits: int | None = None
    cname: Literal["lz4", "lz4hc", "zstd", "zlib", "blosclz"] = "lz4"
    clevel: int = 5

    def __post_init__(self) -> None:
        if self.cname not in ("lz4", "lz4hc", "zstd", "zlib", "blosclz"):
            raise ValueError(
                f"cname must be one of blosc's compressors lz4, lz4hc, zstd, zlib, blosclz; "
                f"got {self.cname!r}. The default is cname='lz4'."
            )
        if self.keepbits is not None and not (
            isinstance(self.keepbits, int) and 1 <= self.keepbits <= 51
        ):
            raise ValueError(
                f"keepbits must be None (lossless) or an int in 1..51; got {self.keepbits!r}. "
                "Use e.g. Compression(keepbits=12) for a relative error below 2**-13."
            )

    @property
    def relative_error_bound(self) -> float:
        """Largest relative error of a stored value (0.0 when lossless)."""
        return 0.0 if self.keepbits is None else 2.0 ** -(self.keepbits + 1)

    def stored_values(self, values: np.ndarray) -> np.ndarray:
        """``values`` as the store holds them: mantissas rounded to ``keepbits`` (else as is).

        >>> Compression(keepbits=2).stored_values(np.array([1.3])).tolist()
        [1.25]
        """
        if self.keepbits is None:
            return values
        from numcodecs import BitRound

        rounded = np.asarray(BitRound(keepbits=self.keepbits).encode(np.ascontiguousarray(values)))
        return rounded.view(values.dtype).reshape(values.shape)

    def to_json(self) -> dict[str, Any]:
        return {"keepbits": self.keepbits, "cname": self.cname, "clevel": self.clevel}

    def filters(self, dtype: np.dtype[Any]) -> list[Any]:
        if self.keepbits is None:
            return []
        from zarr.codecs.numcodecs import BitRound

        limit = 22 if dtype == np.float32 else 51
        if self.keepbits > limit:
            raise ValueError(
                f"keepbits={self.keepbits} exceeds the {limit} mantissa bits of {dtype}; "
                f"use keepbits <= {limit} or keepbits=None for lossless storage."
            )
        return [BitRound(keepbits=self.keepbits)]

    def compressors(self) -> list[Any]:
        return [
            BloscCodec(cname=self.cname, clevel=self.clevel, shuffle="bitshuffle"),
            Crc32cCodec(),
        ]


@dataclass(frozen=True)
class StoreMeta:
    """What a store is: everything ``open`` needs, recorded in the group's attributes."""

    shape: tuple[int, int]
    block_shape: tuple[int, int]
    dtype: str = "float32"
    computed_by: Mapping[str, Any] = field(default_factory=dict)
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    compression: Compression = field(default_factory=Compression)
    format_version: int = FORMAT_VERSION
    library_version: str = ""

    def __post_init__(self) -> None:
        check_shapes(self.shape, self.block_shape)
        if self.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"dtype must be one of {SUPPORTED_DTYPES}; got {self.dtype!r}. "
                'Pass dtype="float32" (the default) or dtype="float64".'
            )

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (
            -(-self.shape[0] // self.block_shape[0]),
            -(-self.shape[1] // self.block_shape[1]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "library_version": self.library_version or __version__,
            "shape": list(self.shape),
            "block_shape": list(self.block_shape),
            "dtype": self.dtype,
            "computed_by": dict(self.computed_by),
            "fingerprints": dict(self.fingerprints),
            "compression": self.compression.to_json(),
        }

    @classmethod
    def from_json(cls, attrs: Mapping[str, Any], where: str) -> StoreMeta:
        try:
            version = int(attrs["format_version"])
            if version > FORMAT_VERSION:
                raise NotAStoreError(
                    f"{where} has infl_array store format {version}, newer than this version "
                    f"of infl_array understands ({FORMAT_VERSION}); upgrade infl_array."
                )
            comp = attrs.get("compression", {})
            return cls(
                shape=_pair(attrs["shape"]),
                block_shape=_pair(attrs["block_shape"]),
                dtype=str(attrs["dtype"]),
                computed_by=dict(attrs.get("computed_by", {})),
                fingerprints={str(k): str(v) for k, v in attrs.get("fingerprints", {}).items()},
                compression=Compression(
                    keepbits=comp.get("keepbits"),
                    cname=comp.get("cname", "zstd"),
                    clevel=int(comp.get("clevel", 3)),
                ),
                format_version=version,
                library_version=str(attrs.get("library_version", "")),
            )
        except NotAStoreError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NotAStoreError(
                f"{where} has damaged infl_array metadata ({type(exc).__name__}: {exc}); "
                "expected the group attribute 'infl_array' with shape, block_shape and dtype. "
                "Recreate the store with overwrite=True."
            ) from exc


def _pair(value: Any) -> tuple[int, int]:
    a, b = value
    return (int(a), int(b))


def check_shapes(shape: Any, block_shape: Any) -> None:
    """Raise a clear error unless shape and block_shape are two positive ints each."""
    for name, value in (("shape", shape), ("block_shape", block_shape)):
        if (
            not isinstance(value, tuple | list)
            or len(value) != 2
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)
        ):
            raise TypeError(
                f"{name} must be a pair of ints (n_test, n_train); got {value!r}. "
                f"Pass e.g. {name}=(256, 4096)."
            )
        if any(v <= 0 for v in value):
            raise ValueError(
                f"{name} must be positive on both axes; got {tuple(value)}. "
                + (
                    "An influence matrix needs at least one test and one train point."
                    if name == "shape"
                    else "Use blocks of at least 1 x 1, e.g. block_shape=(256, 4096)."
                )
            )
