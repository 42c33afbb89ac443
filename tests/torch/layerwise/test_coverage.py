"""Which parameters the per-layer backends cover (issue 24), on hand-written models.

* every trainable parameter of an embedding + attention + norm + MLP model is covered, and each
  layer's per-sample gradient equals plain autograd's (float64);
* a weight tied between an embedding and an output layer is one parameter whose gradient is the
  sum over both uses (counted once);
* what is left out is never silent: ``PartialCoverageWarning`` names the modules and the
  fraction covered; ``strict_coverage=True`` raises;
* EK-FAC values on an embedding layer agree with the explicit K-FAC matrix built here.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from layer_reference import float32_default, layout_grads
from torch import nn

from infl_array.torch import EkfacInfluence, PartialCoverageWarning, ProjectedInfluence
from infl_array.torch.layerwise.coverage import find_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, WIDTH, T = 9, 4, 5


class TinyLM(nn.Module):
    """Embedding, self-attention (packed projection), LayerNorm, MLP, tied output layer."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True)
        self.norm = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 6), nn.Tanh(), nn.Linear(6, WIDTH))
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)
        h = h + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        h = self.norm(h)
        return self.head(h + self.mlp(h))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (
        F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
        / (logits.shape[0])
    )


def tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))


def model(tie: bool = True) -> TinyLM:
    torch.manual_seed(0)
    with float32_default():
        return TinyLM(tie).double().eval()


@pytest.mark.parametrize("tie", [True, False])
def test_every_parameter_covered_and_gradients_exact(tie: bool) -> None:
    net = model(tie)
    layers, excluded = find_layers(net)
    assert excluded == []
    kinds = {spec.name: spec.kind for spec in layers}
    assert kinds["attn"] == "mha_in" and kinds["attn.out_proj"] == "linear"
    assert kinds["norm"] == "module" and kinds["head"] == "linear"
    assert ("embed" in kinds) is not tie  # a tied embedding is part of the head's layer
    x = tokens(6, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left out: no warning
        infl = EkfacInfluence(net, lm_loss, 0.01).fit((x, x))
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert sorted(infl.covered_parameters) == sorted(names)
    assert infl.covered_parameters.count("embed.weight") == 1
    got = infl.layer_gradients(x, x)
    expected = layout_grads(net, infl.layers, lm_loss, x, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_tied_weight_is_one_parameter_with_both_uses() -> None:
    net = model(tie=True)
    x = tokens(4, 2)
    infl = EkfacInfluence(net, lm_loss, 0.01).fit((x, x))
    head = next(spec for spec in infl.layers if spec.name == "head")
    assert head.parameter_names == ("embed.weight",) and len(head.tied) == 1
    assert sum(spec.n_params for spec in infl.layers) == sum(p.numel() for p in net.parameters())
    # the head's positions: T of its own and T of the embedding's
    grads = infl.layer_gradients(x, x)
    # without the embedding's use the gradient would differ: compare with an untied copy
    untied = model(tie=False)
    untied.load_state_dict({k: v for k, v in net.state_dict().items()}, strict=False)
    untied.head.weight = nn.Parameter(net.embed.weight.detach().clone())
    other = EkfacInfluence(untied, lm_loss, 0.01).fit((x, x))
    split = dict(
        zip(
            [s.name for s in other.layers],
            other.layer_gradients(x, x).split([s.n_params for s in other.layers], 1),
            strict=True,
        )
    )
    own = dict(
        zip(
            [s.name for s in infl.layers],
            grads.split([s.n_params for s in infl.layers], 1),
            strict=True,
        )
    )
    summed = split["head"] + split["embed"].reshape(-1, WIDTH, VOCAB).transpose(1, 2).reshape(4, -1)
    torch.testing.assert_close(own["head"], summed, rtol=1e-10, atol=1e-12)


def test_partial_coverage_warns_names_modules_and_fraction() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Conv1d(1, 1, 1), nn.Linear(4, 2)).double()
    net[1].requires_grad_(True)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.scale = nn.Parameter(torch.ones(4))  # a parameter of a module with children
            self.conv = nn.Conv1d(1, 1, 2)  # a leaf with a matrix weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x) * self.scale
            return self.b(h + self.conv(h[:, None]).sum() * 0)

    with float32_default():
        m = Model().double().eval()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    total = sum(p.numel() for p in m.parameters())
    covered = 3 * 4 + 4 + 4 * 2 + 2
    with pytest.warns(PartialCoverageWarning, match=r"covers (\d+\.\d)%") as caught:
        infl = EkfacInfluence(m, F.cross_entropy, 0.01).fit((x, y))
    message = str(caught[0].message)
    assert f"{covered / total:.1%}" in message
    assert "'<model>'" in message and "'conv'" in message
    assert infl.covered_parameters == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert infl.excluded_parameters == ["scale", "conv.weight", "conv.bias"]
    with pytest.raises(ValueError, match=r"'<model>', 'conv'.*strict_coverage=True"):
        ProjectedInfluence(m, F.cross_entropy, 0.01, strict_coverage=True).fit((x, y))
    m.scale.requires_grad_(False)
    m.conv.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EkfacInfluence(m, F.cross_entropy, 0.01, strict_coverage=True).fit((x, y))


def test_out_proj_inside_attention_is_covered_without_freezing() -> None:
    torch.manual_seed(0)
    with float32_default():
        layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
        net = nn.Sequential(layer, nn.Flatten(), nn.Linear(12, 2)).double().eval()
    x, y = torch.randn(5, 3, 4, dtype=torch.float64), torch.randint(0, 2, (5,))
    infl = EkfacInfluence(net, F.cross_entropy, 0.01).fit((x, y))
    assert infl.excluded_parameters == []
    assert "0.self_attn.in_proj_weight" in infl.covered_parameters
    torch.testing.assert_close(
        infl.layer_gradients(x, y), layout_grads(net, infl.layers, F.cross_entropy, x, y)
    )


# --------------------------------------------------------------------------- K-FAC reference
class BagOfWords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH, padding_idx=0)
        self.out = nn.Linear(WIDTH, 3)
        self.out.requires_grad_(False)  # the embedding alone: its K-FAC matrix is explicit

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(ids)).sum(1))


def embedding_kfac(net: BagOfWords, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``kron(G, A) / T`` of the embedding from one-hot inputs and autograd output gradients."""
    a_sum = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    g_sum = torch.zeros(WIDTH, WIDTH, dtype=torch.float64)
    for i in range(x.shape[0]):
        out = net.embed(x[i : i + 1])
        out.retain_grad()
        F.cross_entropy(net.out(torch.tanh(out).sum(1)), y[i : i + 1]).backward()
        a = F.one_hot(x[i], VOCAB).double() * (x[i] != 0)[:, None]  # padding_idx: no gradient
        a_sum += a.T @ a
        g_sum += out.grad[0].T @ out.grad[0]  # type: ignore[index]
    n = x.shape[0]
    return torch.kron(g_sum / n, a_sum / n) / T


def test_embedding_values_match_explicit_kfac() -> None:
    torch.manual_seed(0)
    with float32_default():
        net = BagOfWords().double().eval()
    x, y = tokens(30, 3), torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(4))
    reg = 0.01
    infl = EkfacInfluence(net, F.cross_entropy, reg, fisher_type="empirical").fit((x, y))
    assert [spec.kind for spec in infl.layers] == ["embedding"]
    h = embedding_kfac(net, x, y) + reg * torch.eye(WIDTH * VOCAB, dtype=torch.float64)
    g = layout_grads(net, infl.layers, F.cross_entropy, x, y)
    expected = torch.linalg.solve(h, g[:5].T).T @ g.T
    got = infl.influences(x[:5], y[:5], x, y)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert infl.curvature[0].q_a is None  # one-hot inputs: a diagonal factor, no vocab x vocab
    # sparse train rows: T token ids and T output gradients, not the (width, vocab) matrix
    assert infl.train_factor_width == T * (1 + WIDTH) < WIDTH * VOCAB
    train_f, test_f = infl.train_factors(x, y), infl.test_factors(x, y)
    torch.testing.assert_close(
        infl.factor_diagonal(test_f, train_f), infl.factor_product(test_f, train_f).diagonal()
    )
    short = x[:5, :3]  # fewer tokens than at fit: padded with zero gradients
    g_short = layout_grads(net, infl.layers, F.cross_entropy, short, y[:5])
    got_short = infl.factor_product(
        infl.test_factors(x[:5], y[:5]), infl.train_factors(short, y[:5])
    )
    torch.testing.assert_close(
        got_short, torch.linalg.solve(h, g[:5].T).T @ g_short.T, rtol=1e-9, atol=1e-12
    )
    # projected at full width: the same values, projections done by gathering columns
    full = ProjectedInfluence(
        net,
        F.cross_entropy,
        reg,
        projection_dim=10**6,
        preconditioner="kfac",
        fisher_type="empirical",
    ).fit((x, y))
    got_p = full.test_factors(x[:5], y[:5]) @ full.train_factors(x, y).T
    torch.testing.assert_close(got_p, expected, rtol=1e-9, atol=1e-12)
    # EK-FAC from token ids (scattered) equals EK-FAC from the one-hot rows (projected, full)
    ekfac = EkfacInfluence(net, F.cross_entropy, reg, update_diagonal=True, fisher_type="empirical")
    dense = ProjectedInfluence(
        net, F.cross_entropy, reg, projection_dim=10**6, fisher_type="empirical"
    ).fit((x, y))
    torch.testing.assert_close(
        ekfac.fit((x, y)).influences(x[:5], y[:5], x, y),
        dense.test_factors(x[:5], y[:5]) @ dense.train_factors(x, y).T,
        rtol=1e-9,
        atol=1e-12,
    )


def test_duplicated_embedding_sample_ranks_first() -> None:
    torch.manual_seed(0)
    with float32_default():
        net = BagOfWords().double().eval()
    net.out.requires_grad_(True)
    x, y = tokens(40, 5), torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(6))
    x, y = torch.cat([x, x[:5]]), torch.cat([y, y[:5]])  # train points 40..44 duplicate 0..4
    infl = EkfacInfluence(net, F.cross_entropy, 0.01, update_diagonal=True).fit((x, y))
    scores = infl.influences(x[:5], y[:5], x, y)
    torch.testing.assert_close(scores[:, :5].diagonal(), scores[:, 40:].diagonal())
    above = [int((scores[i] > scores[i, 40 + i]).sum()) for i in range(5)]  # points ranked higher
    assert max(above) <= 1 and sum(above) <= 1, above
