"""The language-model benchmark's model, data and retrained models (issue 24).

:func:`prepare` pretrains a model on the pretraining sequences (when ``pretrain`` > 0: the
model every training starts from), trains the base model from it on the train sequences and
saves both with the data (:func:`lm_common.save`); :func:`retrain` trains one model per random
half of the train set the same way (same start, same schedule, the full training's order less
the left-out sequences: :func:`lm_common.train`) and records each model's loss on every query,
the ground truth of the LDS. Both are cached in the work folder by their settings, so a rerun of the
driver with the same settings reuses them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lm_common import build_model, gpt2_config, make_data, save, sequence_losses, train


def settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def prepare(work: Path, s: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The data file of settings ``s`` (trained model + data) and facts about the model."""
    keys = ("n_train", "n_test", "dups", "width", "layers", "heads", "epochs", "lr", "batch")
    keys += ("pretrain", "pretrain_epochs", "pretrain_lr")
    mine = {k: s[k] for k in keys}
    path = work / f"lm-{settings_key(mine)}.pt"
    facts_path = path.with_suffix(".json")
    if path.exists() and facts_path.exists():
        return path, json.loads(facts_path.read_text())
    data = make_data(s["n_train"], s["n_test"], s["dups"], s["pretrain"])
    config = gpt2_config(s["width"], s["layers"], s["heads"])
    model = build_model(config)
    start = time.perf_counter()
    if s["pretrain"]:
        train(model, data["pretrain"], s["pretrain_epochs"], s["pretrain_lr"], s["batch"])
    pretrained = time.perf_counter()
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    start_loss = float(sequence_losses(model, data["test"]).mean() / 63)
    train(model, data["train"], s["epochs"], s["lr"], s["batch"])
    seconds = time.perf_counter() - pretrained
    del data["pretrain"]  # the workers need the train sequences and queries only
    save(path, model, config, {**data, "start_state": start_state})
    facts = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_seconds": pretrained - start,
        "pretrained_query_loss_per_token": start_loss,
        "train_seconds": seconds,
        "train_loss_per_token": float(sequence_losses(model, data["train"]).mean() / 63),
        "query_loss_per_token": float(sequence_losses(model, data["test"]).mean() / 63),
        "config": config,
    }
    facts_path.write_text(json.dumps(facts, indent=1))
    return path, facts


def retrain_one(data_path: Path, blob: dict, mask: np.ndarray, m: int, s: dict) -> Path:
    """Retrain model ``m`` on the train sequences of ``mask`` (unless cached); its loss file."""
    one = path_of(data_path, m, s)
    if not one.exists():
        model = build_model(blob["config"])
        model.load_state_dict(blob["start_state"])
        keep = torch.from_numpy(mask)
        train(model, blob["train"], s["epochs"], s["lr"], s["batch"], keep)
        tmp = one.with_suffix(".tmp.npy")
        np.save(tmp, sequence_losses(model, blob["test"]))
        tmp.replace(one)  # whole files only: another process may be retraining too
    return one


def subset_masks(s: dict[str, Any], n_train: int) -> np.ndarray:
    """The ``(retrainings, n_train)`` masks of the random subsets (seeded)."""
    gen = np.random.default_rng(1)
    masks = np.zeros((s["retrainings"], n_train), dtype=bool)
    for m in range(s["retrainings"]):
        masks[m, gen.permutation(n_train)[: int(s["subset_fraction"] * n_train)]] = True
    return masks


def retrain(
    work: Path,
    s: dict[str, Any],
    data_path: Path,
    deadline: float,
    reverse: bool = False,
    start: int | None = None,
) -> dict[str, Any]:
    """Subset masks ``(m, n_train)`` and the query losses ``(m, n_test)`` of retrained models.

    Each retraining is cached in its own file, so an interrupted run keeps what it did and a
    second process (``reverse=True``: from model ``start``, default the last, down) can share
    the work; no
    retraining starts after ``deadline`` (``time.time()``): the models done by then are used.
    """
    blob = torch.load(data_path, weights_only=True)
    masks = subset_masks(s, len(blob["train"]))
    order = range(s["retrainings"])
    first = s["retrainings"] - 1 if start is None else start
    seconds = []
    for m in range(first, -1, -1) if reverse else order:
        if time.time() > deadline:
            break
        if not path_of(data_path, m, s).exists():
            start = time.perf_counter()
            retrain_one(data_path, blob, masks[m], m, s)
            seconds.append(time.perf_counter() - start)
    done = [m for m in order if path_of(data_path, m, s).exists()]
    return {
        "masks": masks[done],
        "losses": np.array([np.load(path_of(data_path, m, s)) for m in done]),
        "seconds_each": float(np.mean(seconds)) if seconds else None,
        "trained": len(seconds),
    }


def path_of(data_path: Path, m: int, s: dict[str, Any]) -> Path:
    return data_path.with_name(f"{data_path.stem}-r{m}-{s['subset_fraction']}.npy")
