"""Top-k without the dense matrix: time and store bytes of ``arr.top_k`` (issue 23, small).

A briefly trained MLP (Gaussian-mixture data, 10 classes, 10% train labels flipped), fitted
with ``ProjectedInfluence(projection_dim=256, preconditioner="identity")``; a float32 store
(blocks ``500 x 4096``, or ``--block``); then, each timed, with the store's bytes before and after:

* ``top_k``: ``arr.top_k(k)`` on a fresh store (the first answer: train factors + scan);
* ``top_k_again``: the same call again (factors stored by then);
* ``top_k_array``: ``arr.top_k_array(k).fill()`` and a repeat read of it (versions that have it);
* ``dense``: ``arr.fill()`` then ``arr.top_k(k)`` from the stored matrix (``--dense``).

Run from the repository root, e.g.::

    PYTHONPATH=$PWD nice -n 10 python benchmarks/large/bench_topk.py --n-train 50000 --n-test 500

Prints one JSON line. Set ``PYTHONPATH`` to another checkout to measure that version.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import infl_array as ia
from infl_array.torch import ProjectedInfluence


def store_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def trained_mlp(n_train: int, n_test: int, dim: int, seed: int = 0) -> tuple[Any, ...]:
    """A small MLP trained for a few epochs, and its train and test data."""
    g = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(10, dim, generator=g)
    data = []
    for n, flip in ((n_train, 0.1), (n_test, 0.0)):
        y = torch.randint(0, 10, (n,), generator=g)
        x = centers[y] + 1.5 * torch.randn(n, dim, generator=g)
        noisy = torch.rand(n, generator=g) < flip
        data.append((x, torch.where(noisy, torch.randint(0, 10, (n,), generator=g), y)))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(dim, 64), nn.Tanh(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data[0]
    for _ in range(3):
        for s in range(0, n_train, 512):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[s : s + 512]), y[s : s + 512]).backward()
            opt.step()
    return model, data[0], data[1]


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--dense", action="store_true")
    parser.add_argument("--block", type=int, nargs=2, default=(500, 4096))
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, train, test = trained_mlp(args.n_train, args.n_test, args.dim)
    infl = ProjectedInfluence(
        model, nn.functional.cross_entropy, 1e-3, 256, "identity", batch_size=512
    )
    out: dict[str, Any] = {"n_train": args.n_train, "n_test": args.n_test, "k": args.k}
    _, out["fit_s"] = timed(lambda: infl.fit(train))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "s"
        arr = ia.InfluenceArray.create(
            path, infl, test=test, train=train, block_shape=tuple(args.block), dtype="float32"
        )
        created = store_bytes(path)
        (values, indices), out["top_k_s"] = timed(lambda: arr.top_k(args.k))
        out["top_k_written_bytes"] = store_bytes(path) - created
        out["matrix_blocks_stored"] = int(arr.computed.sum())
        _, out["top_k_again_s"] = timed(lambda: arr.top_k(args.k))
        if hasattr(arr, "top_k_array"):
            before = store_bytes(path)
            tk = arr.top_k_array(args.k)
            _, out["top_k_array_fill_s"] = timed(lambda: tk.fill(progress=False))
            out["top_k_array_bytes"] = store_bytes(path) - before
            stats = tk.stats
            scanned = stats.blocks_read + stats.blocks_computed + stats.blocks_skipped
            out["top_k_array_skipped"] = f"{stats.blocks_skipped}/{scanned}"
            again = ia.open(path).top_k_array(args.k)
            stored, out["top_k_array_read_s"] = timed(lambda: again.indices[:])
            assert (stored == indices).all()
        if args.dense:
            _, out["dense_fill_s"] = timed(lambda: arr.fill(progress=False))
            out["dense_bytes"] = store_bytes(path) - created
            (v2, i2), out["top_k_from_dense_s"] = timed(lambda: arr.top_k(args.k))
            out["same_answer"] = bool((i2 == indices).all() and (v2 == values).all())
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
