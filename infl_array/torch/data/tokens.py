"""Language-model outputs and loss: Hugging Face output objects, ``causal_lm_loss``.

* :func:`model_outputs`: a model's outputs as a tensor. Hugging Face ``transformers`` models
  return output objects (``CausalLMOutputWithPast`` and the like); their ``logits`` are the
  outputs every backend passes to the loss. Plain tensors pass through. ``transformers`` is
  never imported: an object is recognised by its ``logits`` attribute.
* :func:`causal_lm_loss`: the per-sequence language-model loss, usable as the ``loss`` of
  every backend (it reduces by mean over the sequences of a batch, as the backends require):
  position ``t`` predicts the token at ``t + 1`` (labels shifted by one), labels equal to
  ``-100`` (padding, prompts) are ignored, the token losses of a sequence are summed, and the
  batch value is the mean over sequences. A padded position therefore contributes nothing to
  the loss or to any gradient.
* :func:`as_float32_if_half`: half-precision outputs in float32, so that the loss and its
  gradient with respect to the outputs are computed in float32.
* **Samples as mappings** (Hugging Face model inputs: ``input_ids``, ``attention_mask``,
  ``labels``): :func:`split_mapping` packs a batch into one ``(n, T, k)`` integer tensor of
  inputs and the labels, so that every data path (batches, fingerprints, stores) handles one
  tensor; the backends call the model with the unpacked keyword arguments
  (:func:`call_model`). The labels default to ``input_ids`` with padding (``attention_mask``
  0) set to ``-100``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

__all__ = [
    "IGNORE_INDEX",
    "as_float32_if_half",
    "call_model",
    "causal_lm_loss",
    "model_outputs",
    "split_mapping",
    "unpack_inputs",
]

IGNORE_INDEX = -100
"""Label value that :func:`causal_lm_loss` ignores (Hugging Face's convention)."""

HALF = (torch.float16, torch.bfloat16)


def model_outputs(out: Any) -> Any:
    """``out.logits`` for an output object that has them (Hugging Face), else ``out``.

    Examples
    --------
    >>> import torch
    >>> class Output:
    ...     logits = torch.zeros(2, 3)
    >>> model_outputs(Output()).shape, model_outputs(torch.ones(1)).shape
    (torch.Size([2, 3]), torch.Size([1]))
    """
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else out


def as_float32_if_half(t: Any) -> Any:
    """A float16/bfloat16 tensor in float32; anything else unchanged."""
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in HALF else t


def causal_lm_loss(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of each sequence's summed next-token cross entropy.

    Parameters
    ----------
    logits : torch.Tensor or output object
        ``(n, T, vocab)`` scores (or an object with such ``logits``); half precision is
        computed in float32.
    labels : torch.Tensor
        ``(n, T)`` token ids; position ``t``'s logits are scored against ``labels[:, t + 1]``;
        ``-100`` is ignored.

    Returns
    -------
    torch.Tensor
        A scalar: ``(1/n) sum_i sum_t -log p(labels[i, t+1] | logits[i, t])``.

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(2, 3, 4)                       # uniform over 4 tokens
    >>> labels = torch.tensor([[1, 2, 3], [1, 2, -100]])    # 2 and 1 scored tokens
    >>> round(float(causal_lm_loss(logits, labels)), 4)     # 1.5 * log(4)
    2.0794
    """
    logits = as_float32_if_half(model_outputs(logits))
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(
            f"causal_lm_loss needs logits of shape (n, T, vocab), got {shape}; pass the "
            "outputs of a causal language model."
        )
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"causal_lm_loss needs labels of shape (n, T) = {tuple(logits.shape[:2])} for "
            f"logits of shape {tuple(logits.shape)}, got {tuple(labels.shape)}."
        )
    n, _, vocab = logits.shape
    shifted = logits[:, :-1].reshape(-1, vocab)
    target = labels[:, 1:].reshape(-1).long()
    token = F.cross_entropy(shifted, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return token / n


# --------------------------------------------------------------------------- dict samples
LABELS = "labels"


def split_mapping(
    batch: Mapping[str, Any], keys: tuple[str, ...] | None, where: str
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """A batch of Hugging Face style samples as packed ``(x, y)`` and its input keys.

    ``x`` is ``(n, T, k)``: the ``k`` model inputs (``input_ids`` first, then the other keys
    in sorted order, e.g. ``attention_mask``), each ``(n, T)`` integers, stacked on the last
    dimension (:func:`unpack_inputs` undoes it). ``y`` is ``batch["labels"]``, or, without
    labels, ``input_ids`` with the positions whose ``attention_mask`` is 0 set to ``-100``
    (as Hugging Face's causal-LM collator does), so that padding never contributes.

    Parameters
    ----------
    batch : mapping of str to tensor
        ``input_ids`` ``(n, T)`` and optional ``attention_mask``, ``labels`` and other
        integer ``(n, T)`` inputs.
    keys : tuple of str or None
        The input keys to expect (those of the fit data), or None to take the batch's.
    where : str
        What the batch is, for messages.
    """
    if "input_ids" not in batch:
        raise TypeError(
            f"{where} is a mapping without 'input_ids' (keys: {sorted(batch)}); samples as "
            "mappings must be Hugging Face model inputs: input_ids, attention_mask, labels."
        )
    found = ("input_ids", *sorted(k for k in batch if k not in ("input_ids", LABELS)))
    if keys is not None and found != keys:
        raise ValueError(
            f"{where} has the inputs {list(found)} but the model was fitted on {list(keys)}; "
            "pass samples with the same keys."
        )
    ids = torch.as_tensor(batch["input_ids"])
    parts = []
    for key in found:
        value = torch.as_tensor(batch[key])
        if value.shape != ids.shape or value.is_floating_point() or value.ndim != 2:
            raise TypeError(
                f"{where}[{key!r}] has shape {tuple(value.shape)} and dtype {value.dtype}; "
                f"every model input must be integer (n, T) like input_ids "
                f"{tuple(ids.shape)} (pad sequences to one length in the collate_fn)."
            )
        parts.append(value.long())
    if LABELS in batch:
        y = torch.as_tensor(batch[LABELS]).long()
    else:
        y = ids.long().clone()
        if "attention_mask" in batch:
            y[torch.as_tensor(batch["attention_mask"]) == 0] = IGNORE_INDEX
    return torch.stack(parts, dim=-1), y, found


def unpack_inputs(x: torch.Tensor, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The keyword arguments ``{key: x[..., j]}`` of packed inputs (:func:`split_mapping`)."""
    if x.ndim < 1 or x.shape[-1] != len(keys):
        raise ValueError(
            f"inputs packed from {list(keys)} need a last dimension of {len(keys)}, got shape "
            f"{tuple(x.shape)}; pass samples as mappings with these keys."
        )
    return {key: x[..., j] for j, key in enumerate(keys)}


def call_model(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], ...] | None,
    x: torch.Tensor,
    keys: tuple[str, ...] | None,
) -> Any:
    """``model(x)`` (or ``model(**unpack_inputs(x, keys))``), at ``params`` when given."""
    args: tuple[Any, ...] = (x,)
    kwargs: dict[str, Any] = {}
    if keys is not None:
        args, kwargs = (), unpack_inputs(x, keys)
    if params is None:
        return model(*args, **kwargs)
    return functional_call(model, params, args, kwargs)
