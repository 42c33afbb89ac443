"""Sequence-first layers (issue 24): ``(T, n, d)`` inputs are recognised from the module's
declared layout (``batch_first=False``), never from shapes, and give the batch-first values,
also when the batch size equals the sequence length."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from layer_reference import float32_default, layout_grads
from torch import nn

from infl_array.torch import EkfacInfluence, ProjectedInfluence
from infl_array.torch.layerwise.attention import attention_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = T = 6  # batch size == sequence length: shapes cannot tell the sample dimension


class Block(nn.Module):
    """An encoder layer and a Linear applied in the layout this module declares."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first  # declares the layout of what this module applies
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
        self.proj = nn.Linear(8, 8)  # applied to (T, n, d) when not batch_first

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(self.layer(h))


class Encoder(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.first = batch_first  # not a declaration: the embedding and head are batch-first
        self.embed = nn.Embedding(11, 8)
        self.block = Block(batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        if not self.first:
            h = h.transpose(0, 1)
        h = self.block(h)
        if not self.first:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))


def pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    with float32_default():
        first = Encoder(True).double().eval()
        second = Encoder(False).double().eval()
    second.load_state_dict(first.state_dict())
    return first, second


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 11, (N, T), generator=gen), torch.randint(0, 3, (N,), generator=gen)


@pytest.mark.parametrize("backend", ["ekfac", "projected"])
def test_sequence_first_equals_batch_first(backend: str) -> None:
    x, y = data()
    values = []
    for net in pair():
        if backend == "ekfac":
            infl = EkfacInfluence(net, F.cross_entropy, 0.01, update_diagonal=True).fit((x, y))
            values.append(infl.influences(x, y, x, y))
        else:
            infl = ProjectedInfluence(net, F.cross_entropy, 0.01, projection_dim=400)
            infl.fit((x, y))
            values.append(infl.test_factors(x, y) @ infl.train_factors(x, y).T)
        assert infl.excluded_parameters == []
        axes = {spec.name: spec.batch_axis for spec in infl.layers}
        layout = 0 if net.first else 1
        assert axes["block.proj"] == axes["block.layer.linear1"] == layout
        assert axes["block.layer.norm1"] == layout and axes["embed"] == axes["head"] == 0
        assert axes["block.layer.self_attn"] == axes["block.layer.self_attn.out_proj"] == 0
    torch.testing.assert_close(values[0], values[1], rtol=1e-10, atol=1e-12)


def test_sequence_first_gradients_exact() -> None:
    x, y = data()
    net = pair()[1]
    infl = EkfacInfluence(net, F.cross_entropy, 0.01).fit((x, y))
    torch.testing.assert_close(
        infl.layer_gradients(x, y), layout_grads(net, infl.layers, F.cross_entropy, x, y)
    )


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_written_out_equals_module(batch_first: bool) -> None:
    torch.manual_seed(0)
    with float32_default():
        attn = nn.MultiheadAttention(4, 2, batch_first=batch_first).double().eval()
    q = torch.randn(3, 5, 4, dtype=torch.float64)
    kv = torch.randn(3, 7, 4, dtype=torch.float64)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[:, 6] = True
    masks = [
        {"key_padding_mask": padding, "attn_mask": torch.ones(5, 7, dtype=torch.bool).triu(1)},
        {"attn_mask": torch.randn(6, 5, 7, dtype=torch.float64), "average_attn_weights": False},
        {},
    ]
    with torch.no_grad():
        for kwargs in masks:
            out, weights = attn(q, kv, kv, **kwargs)
            got, got_weights = attention_forward(attn, None, q, kv, kv, **kwargs)
            torch.testing.assert_close(got, out)
            torch.testing.assert_close(got_weights, weights)
