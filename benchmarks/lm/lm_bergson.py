"""bergson's worker of the language-model benchmark: its gradient store and FAISS query.

Runs in ``.venv-bergson`` (``bash benchmarks/peers/peer_envs.sh bergson``). Usage:
``python benchmarks/lm/lm_bergson.py '<json>'`` with keys ``data``, ``threads``,
``projection_dim`` (bergson's per-module side: each module's gradient becomes a
``projection_dim x projection_dim`` matrix), ``batch``, ``store``, ``out``.

What ``bergson build`` does, called as its library: ``collect_gradients`` writes the projected
per-sequence loss gradients (summed next-token cross entropy, bergson's default
``loss_reduction="sum"``) of every train sequence to an on-disk gradient store (``fit``); the
query sequences' gradients go to a second store the same way, then an ``Attributor`` over the
train store with a FAISS ``Flat`` index (exact inner products, bergson's default factory)
returns, for each query, all ``n_train`` scores (``query``: index creation and search). No
preconditioner (bergson's default: ``hessian_path`` unset), so a score is the inner product of
projected gradients. The scores are scattered back into an ``(n_query, n_train)`` matrix.

bergson 2.5.1's FAISS path fails on a CPU-only machine: ``FaissIndex.create_index`` asks
``isinstance(index, faiss.GpuIndex)`` and ``faiss-cpu`` has no ``GpuIndex``
(``AttributeError``). The worker records that error (``faiss_error``) and retries with
``faiss.GpuIndex`` set to an empty class (so the check answers "not on a GPU", as it should on
a CPU): the FAISS query itself is bergson's, unchanged.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import faiss
import numpy as np
import torch
from bergson import Attributor, FaissConfig, IndexConfig, collect_gradients
from bergson.data import allocate_batches, column_offsets, load_gradients
from bergson.utils.worker_utils import processor_for
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_common import Timer, load, worker_args, write_result


def build_index(model, tokens: torch.Tensor, path: Path, args: dict) -> None:
    """A bergson gradient store of ``tokens`` at ``path`` (as ``bergson build`` writes it)."""
    shutil.rmtree(path, ignore_errors=True)
    length = tokens.shape[1]
    ds = Dataset.from_dict({"input_ids": tokens.tolist(), "length": [length] * len(tokens)})
    cfg = IndexConfig(
        run_path=str(path),
        projection_dim=args["projection_dim"],
        token_batch_size=args["batch"] * length,
    )
    cfg.partial_run_path.mkdir(parents=True, exist_ok=True)
    processor = processor_for(cfg)
    processor.save(cfg.partial_run_path)
    batches = allocate_batches(ds["length"][:], cfg.token_batch_size)
    collect_gradients(model, ds, processor, cfg, batches=batches)
    shutil.move(cfg.partial_run_path, path)


def main() -> None:
    args = worker_args()
    model, blob = load(args["data"])
    train, test = blob["train"], blob["test"]
    store = Path(args["store"])
    timer = Timer()
    with timer("fit"):
        build_index(model, train, store / "train", args)
    with timer("query"):
        build_index(model, test, store / "query", args)
        try:
            attributor = Attributor(store / "train", faiss_cfg=FaissConfig("Flat"))
            faiss_error = None
        except AttributeError as e:
            if hasattr(faiss, "GpuIndex"):
                raise
            faiss_error = f"{type(e).__name__}: {e}"
            faiss.GpuIndex = type("GpuIndex", (), {})  # faiss-cpu: no index is on a GPU
            shutil.rmtree(store / "train" / "faiss_Flat", ignore_errors=True)
            attributor = Attributor(store / "train", faiss_cfg=FaissConfig("Flat"))
        flat = load_gradients(store / "query")
        sizes = json.loads((store / "query" / "info.json").read_text())["grad_sizes"]
        queries = {
            name: torch.from_numpy(np.asarray(flat[:, lo:hi], dtype=np.float32))
            for name, (lo, hi) in column_offsets(sizes).items()
        }
        values, indices = attributor.search(queries, len(train))
    scores = np.zeros((len(test), len(train)), dtype=np.float32)
    np.put_along_axis(scores, indices.numpy().astype(np.int64), values.numpy(), axis=1)
    width = int(sum(sizes.values()))
    shutil.rmtree(store, ignore_errors=True)
    covered = sorted(sizes)
    result = {"times": timer.times, "width": width, "modules": covered, "faiss_error": faiss_error}
    write_result(args["out"], result, scores)


if __name__ == "__main__":
    main()
