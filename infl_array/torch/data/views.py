"""Random-access views of training and test data for the torch backends.

:func:`as_indexed` normalises every data form the backends accept into an
:class:`IndexedData`, which can collate any subset of samples in a given order
(:meth:`IndexedData.take`), iterate over all data in order in batches
(:meth:`IndexedData.batches`) and fingerprint the data cheaply
(:meth:`IndexedData.fingerprint`).

Accepted forms
--------------
* a tuple or list ``(x, y)`` of torch tensors or numpy arrays with equal first dimension;
* a map-style :class:`torch.utils.data.Dataset` whose items are ``(x, y)`` pairs (a
  :class:`~torch.utils.data.TensorDataset` of two tensors takes the fast tensor path);
* a :class:`torch.utils.data.DataLoader` over a map-style dataset: its ``.dataset`` is
  indexed in dataset order (the loader's sampler and shuffling are ignored, since influence
  rows and columns are dataset indices) and its ``collate_fn`` builds batches; its
  ``batch_size`` is kept as :attr:`IndexedData.batch_size`, a hint for passes over the data.

* samples as mappings of Hugging Face model inputs (``input_ids``, ``attention_mask``,
  ``labels``): a mapping of ``(n, T)`` tensors (a tokenizer's output), a dataset whose items
  are such mappings, or a loader whose batches are. Each batch is packed into ``x`` of shape
  ``(n, T, k)`` and the labels ``y`` (:func:`~infl_array.torch.data.tokens.split_mapping`;
  :attr:`IndexedData.input_keys` names the packed inputs), and the backends call the model
  with the keyword arguments. ``(n, T)`` token tensors need nothing special: ``(ids, labels)``.

An :class:`~torch.utils.data.IterableDataset` (or a loader over one) is rejected: influence
matrices need random access to individual samples.

Fingerprints
------------
A fingerprint is a sha256 hex digest that is equal for equal data held in a new object and
that changes when the data change. It must not read all of a large data set each time a store
is opened, so:

* in-memory tensors/arrays (tuple form or a ``TensorDataset``): when their total size is below
  :data:`FULL_HASH_LIMIT_BYTES` (256 MB) every byte is hashed together with shapes and dtypes;
  above it, the length, shapes and dtypes and a deterministic sample of rows (the first, the
  last and :data:`SAMPLE_ROWS` evenly spaced rows) are hashed;
* a generic dataset: the length, the dataset's type name and a deterministic sample of
  :data:`SAMPLE_ROWS` items (first, last and evenly spaced) are hashed; each item is serialised
  from its tensors/arrays (dtype, shape, bytes) and plain Python values.

Sampled fingerprints can miss a change to a row that is not sampled; the full hash cannot.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data.dataloader import default_collate

from infl_array.torch.data.tokens import split_mapping

__all__ = [
    "FULL_HASH_LIMIT_BYTES",
    "SAMPLE_ROWS",
    "DatasetData",
    "IndexedData",
    "TensorData",
    "as_indexed",
    "items_fingerprint",
    "tensor_buffer",
    "tensor_bytes",
]

FULL_HASH_LIMIT_BYTES = 256 * 1024**2
"""In-memory data smaller than this (in bytes) is hashed in full."""

SAMPLE_ROWS = 64
"""Number of evenly spaced rows/items (plus first and last) hashed for large or generic data."""


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw bytes of a tensor's values in C order, on the CPU (any dtype, including bfloat16)."""
    return tensor_buffer(t).tobytes()


def tensor_buffer(t: torch.Tensor) -> memoryview:
    """The bytes of :func:`tensor_bytes` as a buffer, sharing the tensor's memory where
    it is a contiguous CPU tensor (for hashing without a copy of a large tensor)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def sample_indices(n: int, k: int = SAMPLE_ROWS) -> np.ndarray:
    """First, last and about ``k`` evenly spaced indices of ``range(n)``, sorted and unique."""
    if n <= k + 2:
        return np.arange(n)
    spaced = np.linspace(0, n - 1, num=k + 2).round().astype(np.int64)
    return np.unique(spaced)


def _as_index_array(index: range | np.ndarray | Sequence[int], n: int) -> torch.Tensor:
    """Validate an index (range, integer array or sequence) and return a long tensor."""
    if isinstance(index, range):
        arr = np.arange(index.start, index.stop, index.step, dtype=np.int64)
    else:
        arr = np.asarray(index)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"take() expected a 1-d sequence of integer indices or a range, got an array of "
                f"dtype {arr.dtype} and shape {arr.shape}; pass e.g. range(0, 10) or "
                f"np.array([3, 1, 2])."
            )
        arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise IndexError(
            f"take() got indices in [{arr.min()}, {arr.max()}] but the data has {n} samples; "
            f"indices must lie in [0, {n - 1}] (negative indices are not supported)."
        )
    return torch.from_numpy(arr)


class IndexedData:
    """Random-access data: ``(x, y)`` batches for any index set, in order.

    Subclasses implement :meth:`__len__`, :meth:`take` and :meth:`fingerprint`.

    Attributes
    ----------
    batch_size : int or None
        Batch size suggested by the source (a DataLoader's ``batch_size``), else ``None``.
    input_keys : tuple of str or None
        For samples given as mappings (Hugging Face model inputs), the keys packed into ``x``
        (:func:`~infl_array.torch.data.tokens.split_mapping`); None for plain ``(x, y)`` data.
    """

    batch_size: int | None = None
    input_keys: tuple[str, ...] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, index: range | np.ndarray | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Collate the samples at ``index`` (in that order) into ``(x, y)`` tensors."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 hex digest identifying the data (see the module docstring)."""
        raise NotImplementedError

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield all data in order as ``(x, y)`` batches of at most ``batch_size`` samples.

        Parameters
        ----------
        batch_size : int
            Maximum number of samples per batch (the last batch may be smaller).

        Yields
        ------
        tuple of torch.Tensor
            ``(x, y)`` for consecutive index ranges.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive integer, got {batch_size!r}; pass e.g. 256."
            )
        n = len(self)
        for start in range(0, n, batch_size):
            yield self.take(range(start, min(start + batch_size, n)))


class TensorData(IndexedData):
    """In-memory ``(x, y)`` tensors (from tensors, numpy arrays or a ``TensorDataset``).

    Parameters
    ----------
    x, y : torch.Tensor
        Inputs and targets with equal first dimension (at least one sample).
    batch_size : int or None
        Batch size hint (see :attr:`IndexedData.batch_size`).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> None:
        self.x = x
        self.y = y
        self.batch_size = batch_size

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, index: range | np.ndarray | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Collate the samples at ``index`` (in that order) into ``(x, y)`` tensors."""
        idx = _as_index_array(index, len(self))
        return self.x[idx], self.y[idx]

    def fingerprint(self) -> str:
        """sha256 over all bytes (small data) or over shapes and sampled rows (large data)."""
        h = hashlib.sha256()
        total = sum(t.element_size() * t.numel() for t in (self.x, self.y))
        full = total < FULL_HASH_LIMIT_BYTES
        h.update(f"tensors;n={len(self)};full={full}".encode())
        rows = None if full else torch.from_numpy(sample_indices(len(self)))
        for t in (self.x, self.y):
            h.update(f";{t.dtype};{tuple(t.shape)};".encode())
            h.update(tensor_bytes(t if rows is None else t[rows]))
        return h.hexdigest()


def _serialise(obj: Any, h: Any) -> None:
    """Feed a deterministic serialisation of a dataset item into the hash ``h``."""
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(tensor_bytes(obj))
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype.str}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (bool, int, float, complex, str, bytes, type(None), np.generic)):
        h.update(f"S{type(obj).__name__}:{obj!r}".encode())
    elif isinstance(obj, Mapping):
        h.update(f"M{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _serialise(key, h)
            _serialise(obj[key], h)
    elif isinstance(obj, (tuple, list)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _serialise(item, h)
    else:
        try:
            h.update(b"P" + pickle.dumps(obj, protocol=4))
        except Exception:  # unpicklable item: only its type identifies it
            h.update(f"U{type(obj).__module__}.{type(obj).__qualname__}".encode())


def _check_pair(batch: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check that a collated batch is an ``(x, y)`` pair of tensors."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"{where} must give (x, y) pairs, got {type(batch).__name__}"
            f"{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}; "
            "make the dataset's __getitem__ return (input, target)."
        )
    x, y = batch
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(
            f"{where} collated to ({type(x).__name__}, {type(y).__name__}), expected two torch "
            "tensors; return tensors or numbers from __getitem__, or pass a collate_fn that "
            "stacks them."
        )
    return x, y


class DatasetData(IndexedData):
    """A map-style dataset of ``(x, y)`` items, collated with ``collate_fn``.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Map-style dataset with ``__len__`` and ``__getitem__`` returning ``(x, y)``.
    collate_fn : callable or None
        Turns a list of items into an ``(x, y)`` batch; ``None`` uses torch's
        ``default_collate``.
    batch_size : int or None
        Batch size hint (see :attr:`IndexedData.batch_size`).
    """

    def __init__(
        self,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self.batch_size = batch_size
        self._len = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._len

    def take(self, index: range | np.ndarray | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Collate the items at ``index`` (in that order) into ``(x, y)`` tensors.

        Items that are mappings give packed inputs and labels
        (:func:`~infl_array.torch.data.tokens.split_mapping`).
        """
        idx = _as_index_array(index, len(self)).tolist()
        batch = self.collate_fn([self.dataset[i] for i in idx])
        where = f"{type(self.dataset).__name__} items (after collate_fn)"
        if isinstance(batch, Mapping):
            x, y, keys = split_mapping(batch, self.input_keys, where)
            self.input_keys = keys
            return x, y
        return _check_pair(batch, where)

    def fingerprint(self) -> str:
        """sha256 over length, type name and a deterministic sample of items."""
        return items_fingerprint(type(self.dataset), len(self), self.dataset.__getitem__)


def items_fingerprint(cls: type, n: int, item: Callable[[int], Any]) -> str:
    """The fingerprint of ``n`` items of a dataset of type ``cls``, item ``i`` being
    ``item(i)``: sha256 over length, type name and a deterministic sample of items."""
    h = hashlib.sha256()
    h.update(f"dataset;{cls.__module__}.{cls.__qualname__};n={n}".encode())
    for i in sample_indices(n).tolist():
        h.update(f";{i};".encode())
        _serialise(item(i), h)
    return h.hexdigest()


def numpy_to_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory when it may (copied when read-only or not contiguous)."""
    if not a.flags.writeable:
        return torch.from_numpy(np.array(a, order="C", copy=True))
    return torch.from_numpy(np.ascontiguousarray(a))


def _to_tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise TypeError(f"{what} is a numpy array of dtype object; convert it to numbers.")
        return numpy_to_tensor(a)
    raise TypeError(
        f"{what} must be a torch tensor or numpy array, got {type(a).__name__}; "
        "convert it with torch.as_tensor or np.asarray."
    )


def _from_pair(data: tuple[Any, ...] | list[Any], name: str) -> TensorData:
    if len(data) != 2:
        raise ValueError(
            f"{name} as a tuple must be (x, y), got a {type(data).__name__} of length "
            f"{len(data)}; pass (inputs, targets)."
        )
    x = _to_tensor(data[0], f"{name}[0] (x)")
    y = _to_tensor(data[1], f"{name}[1] (y)")
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"{name}: x and y need a leading sample dimension, got shapes {tuple(x.shape)} "
            f"and {tuple(y.shape)}."
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: x has {x.shape[0]} samples but y has {y.shape[0]}; both need the same "
            "first dimension."
        )
    return TensorData(x, y)


def as_indexed(data: object, name: str = "data") -> IndexedData:
    """Normalise a data form into an :class:`IndexedData`.

    Parameters
    ----------
    data : tuple, mapping, Dataset, DataLoader or IndexedData
        ``(x, y)`` tensors or numpy arrays, a mapping of Hugging Face model inputs
        (``input_ids``, ``attention_mask``, ``labels``; packed by
        :func:`~infl_array.torch.data.tokens.split_mapping`), a map-style dataset of ``(x, y)``
        items or of such mappings, or a DataLoader over one (see the module docstring).
    name : str
        Name of the argument, used in error messages.

    Returns
    -------
    IndexedData
        Random-access view of the data.

    Raises
    ------
    TypeError
        For an unsupported type, an iterable-style dataset, or items that are not pairs.
    ValueError
        For empty data or ``x`` and ``y`` of different lengths.
    """
    result: IndexedData
    if isinstance(data, IndexedData):
        result = data
    elif isinstance(data, Mapping):
        x, y, keys = split_mapping(data, None, name)
        result = TensorData(x, y)
        result.input_keys = keys
    elif isinstance(data, (tuple, list)):
        result = _from_pair(data, name)
    elif isinstance(data, DataLoader):
        ds = data.dataset
        _reject_iterable(ds, name)
        # batch_size=None loaders use a per-sample converter; we always collate batches.
        collate = data.collate_fn if data.batch_size is not None else default_collate
        if isinstance(ds, TensorDataset) and collate is default_collate:
            result = _from_tensor_dataset(ds, name)
        else:
            result = _dataset_data(ds, collate, name)
        result.batch_size = data.batch_size
    elif isinstance(data, Dataset):
        _reject_iterable(data, name)
        if isinstance(data, TensorDataset):
            result = _from_tensor_dataset(data, name)
        else:
            result = _dataset_data(data, None, name)
    else:
        raise TypeError(
            f"{name} must be a tuple (x, y) of tensors/arrays, a map-style torch Dataset of "
            f"(x, y) items, or a DataLoader over one; got {type(data).__name__}."
        )
    if len(result) == 0:
        raise ValueError(f"{name} is empty; influence needs at least one sample.")
    return result


def _reject_iterable(ds: object, name: str) -> None:
    if isinstance(ds, IterableDataset):
        raise TypeError(
            f"{name} is (or wraps) an IterableDataset ({type(ds).__name__}); influence "
            "matrices need random access to samples by index. Use a map-style Dataset "
            "(with __len__ and __getitem__) or pass (x, y) tensors."
        )


def _from_tensor_dataset(ds: TensorDataset, name: str) -> TensorData:
    if len(ds.tensors) != 2:
        raise ValueError(
            f"{name} is a TensorDataset of {len(ds.tensors)} tensors, expected 2 (x, y)."
        )
    return _from_pair(tuple(ds.tensors), name)


def _dataset_data(
    ds: Dataset, collate_fn: Callable[[list[Any]], Any] | None, name: str
) -> DatasetData:
    if not hasattr(ds, "__len__"):
        raise TypeError(
            f"{name} ({type(ds).__name__}) has no __len__; a map-style dataset with a known "
            "length is needed."
        )
    result = DatasetData(ds, collate_fn)
    if len(result) > 0:
        result.take([0])  # fail early, with a clear message, on items that are not (x, y)
    return result
