"""What the language-model benchmark's driver and workers share (issue 24).

Runs in the main environment and in every peer's venv: standard library, numpy, torch and
``transformers`` only.

- The corpus: the text of the Python standard library's own ``.py`` sources (the interpreter
  that prepares the data), byte-level tokens (vocabulary 256), cut into sequences of ``length``
  tokens. The first ``n_train + 4 n_test`` sequences hold the train sequences and the queries:
  queries drawn at random among them (so a query's neighbours in its file, which share its
  names and structure, are train sequences), the rest train sequences in file order, ``dups``
  queries planted in the train set (at known positions); the ``pretrain`` sequences after them
  (later files) pretrain the model that every training starts from.
- The model: a 2-layer GPT-2 config from ``transformers`` (random init, no download), trained
  here by :func:`train`; its ``state_dict``, config and the data go to one ``.pt`` file that
  every worker loads (:func:`load`).
- Workers: :func:`worker_args` (one JSON argument), ``Timer`` (named phases, from
  ``benchmarks/large/large_common.py``), :func:`write_result` (timings, peak RSS and the score
  matrix next to the JSON as ``.npy``).
"""

from __future__ import annotations

import json
import resource
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "large"))
from large_common import Timer  # noqa: F401  (the workers' phase timer, re-exported)

LENGTH = 64
VOCAB = 256


def corpus_bytes(limit: int) -> bytes:
    """Up to ``limit`` bytes of the standard library's ``.py`` sources, files in sorted order."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for path in sorted(lib.glob("*.py")):
        out += path.read_bytes() + b"\n"
        if len(out) >= limit:
            break
    if len(out) < limit:
        raise RuntimeError(f"the standard library at {lib} has only {len(out)} bytes of .py")
    return bytes(out[:limit])


def make_data(
    n_train: int, n_test: int, dups: int, pretrain: int = 0, length: int = LENGTH
) -> dict[str, Any]:
    """Train, query and pretraining sequences of ``length`` byte tokens (see the module
    docstring); the first ``dups`` queries replace the train sequences at ``dup_positions``
    (spread over the train set)."""
    n_pool = n_train + 4 * n_test
    raw = corpus_bytes((n_pool + pretrain) * length)
    tokens = torch.tensor(list(raw), dtype=torch.long).view(-1, length)
    gen = torch.Generator().manual_seed(0)
    drawn = torch.randperm(n_pool, generator=gen)
    test = tokens[drawn[:n_test]].clone()
    train = tokens[drawn[n_test : n_test + n_train].sort().values].clone()
    positions = torch.linspace(0, n_train - 1, dups + 2)[1:-1].long() if dups else torch.zeros(0)
    train[positions.long()] = test[:dups]
    return {
        "train": train,
        "test": test,
        "dup_positions": positions.long(),
        "pretrain": tokens[n_pool:].clone(),
    }


def gpt2_config(width: int, layers: int, heads: int, length: int = LENGTH) -> dict[str, Any]:
    """The GPT-2 config's arguments (tied embedding and output weights, no dropout)."""
    return {
        "vocab_size": VOCAB,
        "n_positions": length,
        "n_embd": width,
        "n_layer": layers,
        "n_head": heads,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def build_model(config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """A GPT-2 language model from ``config`` with a fixed random init."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config))
    return model.eval()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross entropy summed over each sequence; ``mean``, ``sum`` or ``none`` over
    sequences (``none``: one loss per sequence)."""
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none"
    )
    per_seq = per_token.view(len(labels), -1).sum(1)
    if reduction == "none":
        return per_seq
    return per_seq.mean() if reduction == "mean" else per_seq.sum()


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


def train(
    model: torch.nn.Module,
    x: torch.Tensor,
    epochs: int,
    lr: float,
    batch: int,
    keep: torch.Tensor | None = None,
) -> torch.nn.Module:
    """AdamW on the mean per-sequence loss over the sequences ``x[keep]`` (all by default).

    Every training takes the same order: epoch ``e`` visits ``x`` in one permutation seeded by
    ``e``, skipping the sequences not kept, so a model retrained on a subset sees its
    sequences in the order, and from the start, that the full training does; only the left-out
    sequences differ (and the batches they shift).
    """
    keep = torch.ones(len(x), dtype=torch.bool) if keep is None else keep
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * -(-int(keep.sum()) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for idx in order[keep[order]].split(batch):
            opt.zero_grad()
            lm_loss(logits_of(model, x[idx]), x[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def sequence_losses(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Each sequence's summed next-token loss."""
    out = [
        lm_loss(logits_of(model, x[s : s + batch]), x[s : s + batch], "none")
        for s in range(0, len(x), batch)
    ]
    return torch.cat(out).numpy()


@torch.no_grad()
def replace_conv1d_modules(model: torch.nn.Module) -> None:
    """GPT-2's ``Conv1D`` layers as ``nn.Linear`` with the same values, in place.

    Kronfluence's language-model example (``examples/wikitext``) does this, since Kronfluence
    (and dattri's block-projected IF, whose default layers are the ``nn.Linear`` ones) track
    ``nn.Linear`` but not ``Conv1D``.
    """
    from transformers.pytorch_utils import Conv1D

    for name, module in model.named_children():
        if len(list(module.children())) > 0:
            replace_conv1d_modules(module)
        if isinstance(module, Conv1D):
            linear = torch.nn.Linear(module.weight.size(0), module.weight.size(1))
            linear.weight.copy_(module.weight.data.t())
            linear.bias.copy_(module.bias.data)
            setattr(model, name, linear)


def linear_fraction(model: torch.nn.Module) -> float:
    """Fraction of the trainable parameters inside ``nn.Linear`` modules (tied ones once)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    inside = {
        id(p): p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
        for p in m.parameters()
    }
    return sum(inside.values()) / total


class Sequences(torch.utils.data.Dataset):
    """Token sequences as Hugging Face samples: ``{"input_ids": x, "labels": x}``."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def save(path: Path, model: torch.nn.Module, config: dict[str, Any], data: dict) -> None:
    """The model's ``state_dict``, its config and ``data`` (tensors, state dicts) to ``path``."""
    torch.save({"state_dict": model.state_dict(), "config": config, **data}, path)


def load(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model (eval mode) and the data of a :func:`save`d file."""
    blob = torch.load(path, weights_only=True)
    model = build_model(blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob


# ---------------------------------------------------------------------- workers
def worker_args() -> dict[str, Any]:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python {sys.argv[0]} '<json arguments>'")
    args: dict[str, Any] = json.loads(sys.argv[1])
    torch.set_num_threads(int(args["threads"]))
    return args


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (``ru_maxrss``, Linux KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_result(out: str | Path, result: dict[str, Any], scores: np.ndarray | None) -> None:
    """``result`` plus the peak RSS to ``out`` (JSON); ``scores`` to ``out`` + ``.npy``."""
    result = {**result, "peak_rss": peak_rss_bytes()}
    if scores is not None:
        np.save(f"{out}.npy", np.asarray(scores, dtype=np.float32))
        result["scores_shape"] = list(np.shape(scores))
    Path(out).write_text(json.dumps(result, indent=1))
