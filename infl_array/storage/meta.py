"""What a store records about itself: shape, block shape, dtype, compression, provenance.

:class:`StoreMeta` is written once, as the group attribute ``"infl_array"``, when a store is
created, and read back by every ``open``. :class:`Compression` describes the codecs of the
stored arrays. This module knows numpy and zarr's codec classes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec

from infl_array.errors import NotAStoreError, format_bytes
from infl_array.version import __version__

__all__ = [
    "MAX_CHUNK_BYTES",
    "LOSSLESS_FACTORS",
    "Compression",
    "StoreMeta",
    "check_chunk_bytes",
    "check_shapes",
    "clip_block_shape",
]

FORMAT_VERSION = 1
MAX_CHUNK_BYTES = (1 << 31) - (1 << 16)
"""Most bytes one stored chunk may take: blosc refuses buffers over 2**31 - 1 bytes (less its
header), so every chunk the package writes stays below this."""
SUPPORTED_DTYPES = ("float32", "float64")
MANTISSA_LIMITS = {"float32": 22, "float64": 51}
"""Largest ``keepbits`` per dtype: one bit fewer than the mantissa (numcodecs BitRound)."""


@dataclass(frozen=True)
class Compression:
    """How blocks are compressed.

    ``keepbits=None`` (the default) is lossless: blosc (``cname``, default lz4 at level 5) with
    bit-shuffle. On influence-like float32 data (heavy-tailed, nearly random mantissas) every
    lossless codec measured lands at 1.04-1.16x; lz4 with bit-shuffle is within 1% of zstd's
    ratio and encodes 2-3x faster, so writing keeps up with computing (benchmarks/RESULTS.md).
    ``cname="none"`` stores the raw values (with the checksum); lossless factors use
    :data:`LOSSLESS_FACTORS`.
    An integer ``keepbits`` (1..22 for float32, 1..51 for float64) first rounds each mantissa to
    that many bits (numcodecs BitRound), which bounds the relative error of every value by
    ``2 ** -(keepbits + 1)`` and makes blocks compress much better. A CRC32C checksum is always
    added, so corrupt bytes raise instead of decoding to wrong numbers.

    The same class describes the stored factors (``create(..., factor_compression=...)``): there
    ``keepbits`` rounds every factor value, with the same relative bound, once, before it is
    used or stored (:mod:`infl_array.storage.factors`); the factor array's codec then only
    compresses (:meth:`after_rounding`).
    """

    keepbits: int | None = None
    cname: Literal["lz4", "lz4hc", "zstd", "zlib", "blosclz", "none"] = "lz4"
    clevel: int = 5

    def __post_init__(self) -> None:
        if self.cname not in ("lz4", "lz4hc", "zstd", "zlib", "blosclz", "none"):
            raise ValueError(
                f"cname must be one of blosc's compressors lz4, lz4hc, zstd, zlib, blosclz, or "
                f"'none' (no compression); got {self.cname!r}. The default is cname='lz4'."
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
        self.check_dtype(values.dtype)
        from numcodecs import BitRound

        rounded = np.asarray(BitRound(keepbits=self.keepbits).encode(np.ascontiguousarray(values)))
        return rounded.view(values.dtype).reshape(values.shape)

    def after_rounding(self) -> Compression:
        """The codec for values already rounded by :meth:`stored_values`: the same compressor
        without the rounding filter (rounding again changes nothing and cost ~0.1 s per 33 MB
        factor block).

        >>> Compression(keepbits=7, cname="zstd").after_rounding()
        Compression(keepbits=None, cname='zstd', clevel=5)
        """
        return replace(self, keepbits=None)

    def to_json(self) -> dict[str, Any]:
        return {"keepbits": self.keepbits, "cname": self.cname, "clevel": self.clevel}

    @classmethod
    def from_json(cls, recorded: Mapping[str, Any]) -> Compression:
        """The compression :meth:`to_json` recorded (stores before the codec was recorded:
        zstd at level 3).

        >>> Compression.from_json(Compression(keepbits=7).to_json()) == Compression(keepbits=7)
        True
        """
        return cls(
            keepbits=recorded.get("keepbits"),
            cname=recorded.get("cname", "zstd"),
            clevel=int(recorded.get("clevel", 3)),
        )

    def check_dtype(self, dtype: Any, what: str = "values") -> None:
        """``ValueError`` unless ``keepbits`` fits the mantissa of ``dtype`` (float32: 1..22,
        float64: 1..51); ``TypeError`` for a dtype rounding does not support.

        >>> Compression(keepbits=30).check_dtype("float32", "matrix values")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: keepbits=30 exceeds the 22 mantissa bits of float32 matrix values; ...
        """
        if self.keepbits is None:
            return
        try:
            name = np.dtype(dtype).name
        except TypeError:  # a dtype numpy does not know (torch.bfloat16)
            name = str(dtype)
        limit = MANTISSA_LIMITS.get(name)
        if limit is None:
            raise TypeError(
                f"keepbits rounds float32 and float64 values only, but the {what} are {name}; "
                "make them float32, or use keepbits=None (lossless)."
            )
        if self.keepbits > limit:
            raise ValueError(
                f"keepbits={self.keepbits} exceeds the {limit} mantissa bits of {name} {what}; "
                f"use keepbits <= {limit} (keepbits=7 keeps bfloat16's precision) or "
                "keepbits=None for lossless storage."
            )

    def filters(self, dtype: np.dtype[Any]) -> list[Any]:
        if self.keepbits is None:
            return []
        from zarr.codecs.numcodecs import BitRound

        self.check_dtype(dtype)
        return [BitRound(keepbits=self.keepbits)]

    def compressors(self) -> list[Any]:
        if self.cname == "none":
            return [Crc32cCodec()]
        return [
            BloscCodec(cname=self.cname, clevel=self.clevel, shuffle="bitshuffle"),
            Crc32cCodec(),
        ]


LOSSLESS_FACTORS = Compression(cname="lz4", clevel=9)
"""How lossless factors are stored: blosc lz4 at level 9 with bit-shuffle, and a checksum.
Per-sample factors (projected gradients) are nearly random floats; only their sign and
exponent bits compress. ``benchmarks/large/bench_topk_codec.py`` measures the codecs on stored
factors of a trained model (section "Top-k at scale: factor codecs" of benchmarks/RESULTS.md):
this one saves about an eighth of the raw bytes, which brings the factors of a top-k store
under 5% of the dense matrix, at a few ms per 16 MB block to encode and to decode.
``factor_compression=Compression(keepbits=7)`` is the compact choice (about 2.6x). Stores
written before keep their factor arrays' codec (zarr records it per array): raw values and a
checksum (``cname="none"``)."""


@dataclass(frozen=True)
class StoreMeta:
    """What a store is: everything ``open`` needs, recorded in the group's attributes."""

    shape: tuple[int, int]
    block_shape: tuple[int, int]
    dtype: str = "float32"
    computed_by: Mapping[str, Any] = field(default_factory=dict)
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    compression: Compression = field(default_factory=Compression)
    factor_compression: Compression | None = None
    format_version: int = FORMAT_VERSION
    library_version: str = ""

    def __post_init__(self) -> None:
        check_shapes(self.shape, self.block_shape)
        if self.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"dtype must be one of {SUPPORTED_DTYPES}; got {self.dtype!r}. "
                'Pass dtype="float32" (the default) or dtype="float64".'
            )
        if self.factor_compression is not None:
            if not isinstance(self.factor_compression, Compression):
                raise TypeError(
                    "factor_compression must be None (lossless factors) or an "
                    f"ia.Compression; got {self.factor_compression!r}. Pass e.g. "
                    "factor_compression=ia.Compression(keepbits=7)."
                )
            self.factor_compression.check_dtype(self.dtype, f"factors of a {self.dtype} store")

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
            "factor_compression": (
                None if self.factor_compression is None else self.factor_compression.to_json()
            ),
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
            factor_comp = attrs.get("factor_compression")
            return cls(
                shape=_pair(attrs["shape"]),
                block_shape=_pair(attrs["block_shape"]),
                dtype=str(attrs["dtype"]),
                computed_by=dict(attrs.get("computed_by", {})),
                fingerprints={str(k): str(v) for k, v in attrs.get("fingerprints", {}).items()},
                compression=Compression.from_json(attrs.get("compression", {})),
                factor_compression=(
                    None if factor_comp is None else Compression.from_json(factor_comp)
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


def clip_block_shape(shape: tuple[int, int], block_shape: tuple[int, int]) -> tuple[int, int]:
    """``block_shape`` clipped to ``shape`` on each axis: no chunk is larger than the matrix.

    A block larger than the matrix would make zarr allocate and write whole chunks of
    ``block_shape`` (an 800 MB chunk for a 240 KB matrix, or a 36 TiB allocation).

    >>> clip_block_shape((60, 1000), (256, 4096))
    (60, 1000)
    >>> clip_block_shape((1000, 10), (256, 4096))
    (256, 10)
    """
    return (min(block_shape[0], shape[0]), min(block_shape[1], shape[1]))


def check_chunk_bytes(block_shape: tuple[int, int], dtype: str) -> None:
    """Refuse a ``block_shape`` whose chunks of ``dtype`` exceed :data:`MAX_CHUNK_BYTES`."""
    nbytes = block_shape[0] * block_shape[1] * np.dtype(dtype).itemsize
    if nbytes > MAX_CHUNK_BYTES:
        raise ValueError(
            f"block_shape={block_shape} of {dtype} makes chunks of {format_bytes(nbytes)}, "
            f"more than the {format_bytes(MAX_CHUNK_BYTES)} a compressed chunk can hold "
            "(blosc's limit is 2**31 - 1 bytes). Use smaller blocks, e.g. the default "
            "block_shape=(256, 4096)."
        )


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
