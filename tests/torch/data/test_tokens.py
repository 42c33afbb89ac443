"""Language-model data (issue 24): ``causal_lm_loss``, output objects, mapping samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infl_array.torch import causal_lm_loss
from infl_array.torch.data.tokens import model_outputs, split_mapping, unpack_inputs
from infl_array.torch.data.views import as_indexed


def test_causal_lm_loss_shifts_ignores_sums_and_averages() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 5), generator=gen)
    labels[1, 3:] = -100
    expected = 0.0
    for i in range(3):
        for t in range(4):
            if labels[i, t + 1] != -100:
                expected -= float(F.log_softmax(logits[i, t], -1)[labels[i, t + 1]])
    expected /= 3
    assert float(causal_lm_loss(logits, labels)) == pytest.approx(expected, rel=1e-12)
    # a mean over sequences: the batch value is the mean of the per-sequence values
    single = [float(causal_lm_loss(logits[i : i + 1], labels[i : i + 1])) for i in range(3)]
    assert float(causal_lm_loss(logits, labels)) == pytest.approx(sum(single) / 3, rel=1e-12)
    half = causal_lm_loss(logits.to(torch.bfloat16), labels)
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match=r"labels of shape \(n, T\) = \(3, 5\)"):
        causal_lm_loss(logits, labels[:, :4])
    with pytest.raises(ValueError, match=r"logits of shape \(n, T, vocab\)"):
        causal_lm_loss(logits[:, 0], labels)


def test_output_objects_give_their_logits() -> None:
    class Output:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    t = torch.zeros(2, 3, 4)
    assert model_outputs(Output(t)) is t and model_outputs(t) is t
    labels = torch.zeros(2, 3, dtype=torch.long)
    assert float(causal_lm_loss(Output(t), labels)) == pytest.approx(
        2 * torch.log(torch.tensor(4.0))
    )


def test_mapping_samples_are_packed_with_padding_ignored() -> None:
    ids = torch.tensor([[5, 6, 7, 0], [1, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    data = as_indexed({"attention_mask": mask, "input_ids": ids})
    assert data.input_keys == ("input_ids", "attention_mask")
    x, y = data.take([1, 0])
    assert x.shape == (2, 4, 2)
    assert torch.equal(unpack_inputs(x, data.input_keys)["input_ids"], ids[[1, 0]])
    assert y.tolist() == [[1, 2, 3, 4], [5, 6, 7, -100]]  # labels: padding is -100
    x2, y2, _ = split_mapping({"input_ids": ids, "labels": ids}, None, "batch")
    assert torch.equal(y2, ids) and x2.shape == (2, 4, 1)
    with pytest.raises(ValueError, match=r"fitted on \['input_ids', 'attention_mask'\]"):
        split_mapping({"input_ids": ids}, ("input_ids", "attention_mask"), "test")
    with pytest.raises(TypeError, match="without 'input_ids'"):
        as_indexed({"pixel_values": torch.zeros(2, 3)})
    with pytest.raises(TypeError, match=r"\['attention_mask'\] has shape \(2, 3\)"):
        as_indexed({"input_ids": ids, "attention_mask": mask[:, :3]})
