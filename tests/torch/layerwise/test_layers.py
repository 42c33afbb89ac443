"""Per-layer capture against torch.func per-sample gradients, and the layer rules.

The reference gradients are ``vmap(grad(loss of one sample))`` over the model's parameters
(written here, independently of the library), reshaped to the ``(d_out, width_in)`` layout:
the weight flattened per output, then the bias column. Everything in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from infl_array.errors import format_bytes
from infl_array.torch import EkfacInfluence, MemoryBudgetError
from infl_array.torch.full.functional import check_finite
from infl_array.torch.layerwise.capture import (
    LayerSpec,
    capture,
    check_budget,
    check_mean_reduction,
    layer_gradients,
    loss_objective,
    pydvl_objective,
    sample_chunks,
)
from infl_array.torch.layerwise.coverage import find_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ConvNet(nn.Module):
    """Strides, dilation, "same" and reflect padding, no-bias layers, in-place ReLU after a
    recorded output, and a Linear layer called twice (shared weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect", bias=False)
        self.c3 = nn.Conv2d(4, 4, (1, 3), padding=(0, 2), dilation=2, padding_mode="circular")
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.shared = nn.Linear(5, 5, bias=False)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.c1(x))
        h = torch.tanh(self.c2(h))
        h = self.relu(self.c3(h))
        h = self.fc(h.flatten(1))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.out(h)


class SeqNet(nn.Module):
    """Linear layers on sequences: several positions per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(x)).mean(dim=1))


def _reference(model: nn.Module, layers: list[LayerSpec], x, y, loss=F.cross_entropy):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xi, yi):
        return loss(functional_call(model, p, (xi[None],)), yi[None])

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    parts = []
    for spec in layers:
        prefix = f"{spec.name}." if spec.name else ""
        w = g[f"{prefix}weight"].reshape(x.shape[0], spec.d_out, -1)
        if spec.has_bias:
            w = torch.cat([w, g[f"{prefix}bias"][..., None]], dim=-1)
        parts.append(w.flatten(1))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (ConvNet, (7, 2, 8, 8)),
        (SeqNet, (7, 5, 4)),
        (lambda: nn.Linear(4, 3), (7, 4)),
        (lambda: nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten(), nn.Linear(12, 2)), (7, 2, 3, 3)),
    ],
)
def test_capture_matches_torch_func(make, shape) -> None:
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = torch.randint(0, 2, (shape[0],))
    layers, excluded = find_layers(model)
    assert excluded == []
    got = layer_gradients(model, layers, x, y, F.cross_entropy)
    expected = _reference(model, layers, x, y)
    assert got.shape == expected.shape == (shape[0], sum(s.n_params for s in layers))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    for p in model.parameters():  # no parameter gradient was touched
        assert p.grad is None


class NormNet(nn.Module):
    """Two LayerNorms, one without a bias, at positions ``(n, T, d)``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.norm2 = nn.LayerNorm(6, bias=False)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():
            for p in (self.norm.weight, self.norm.bias, self.norm2.weight):
                p.normal_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm2(torch.tanh(self.norm(self.proj(x)))).mean(dim=1))


def test_layer_norm_gradients_match_torch_func() -> None:
    """``nn.LayerNorm``'s closed-form per-sample gradients (no re-run of the module)."""
    torch.manual_seed(0)
    model = NormNet().double()
    x, y = torch.randn(7, 5, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    layers, _ = find_layers(model)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    got = layer_gradients(model, layers, x, y, F.cross_entropy)
    offset = 0
    for spec in layers:
        if spec.kind == "module":
            expected = torch.cat([g[name].reshape(7, -1) for name in spec.parameter_names], 1)
            torch.testing.assert_close(
                got[:, offset : offset + spec.n_params], expected, rtol=1e-12, atol=1e-14
            )
        offset += spec.n_params
    assert [s.name for s in layers if s.kind == "module"] == ["norm", "norm2"]


def test_capture_records_positions_and_calls() -> None:
    torch.manual_seed(0)
    model = ConvNet().double()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    layers, _ = find_layers(model)
    records = capture(model, layers, x, lambda out: out.sum())
    by_name = {rec.spec.name: rec for rec in records}
    assert by_name["c1"].positions == 16 and by_name["c2"].positions == 16
    assert by_name["fc"].positions == 1 and by_name["out"].positions == 1
    assert by_name["shared"].positions == 2  # two calls
    assert by_name["c1"].activations().shape == (3, 16, 2 * 9 + 1)
    assert by_name["c2"].activations().shape == (3, 16, 3 * 9)  # no bias column
    # projecting the input side equals projecting the unfolded patches
    proj = torch.randn(5, by_name["c3"].spec.width_in, dtype=torch.float64)
    torch.testing.assert_close(
        by_name["c3"].projected_activations(proj), by_name["c3"].activations() @ proj.T
    )


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(2, 3, (2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False),
        nn.Conv2d(2, 2, 3, padding="same", padding_mode="reflect", dilation=2),
        nn.Conv2d(2, 3, (3, 1), padding=(1, 2), padding_mode="circular", stride=3),
    ],
)
def test_conv_activations_are_unfold_patches(conv: nn.Conv2d) -> None:
    """The strided-view patches equal F.unfold's columns exactly, then the bias's 1."""
    torch.manual_seed(0)
    spec = find_layers(conv.double())[0][0]
    x = torch.randn(3, conv.in_channels, 7, 9, dtype=torch.float64)
    xp, pad = spec._padded(x)
    cols = F.unfold(xp, conv.kernel_size, conv.dilation, pad, conv.stride).transpose(1, 2)
    acts = spec.activations(x)
    assert acts.shape == (*cols.shape[:2], spec.width_in)
    assert torch.equal(acts[..., : spec.d_in], cols)
    if spec.has_bias:
        assert torch.equal(acts[..., spec.d_in], torch.ones(cols.shape[:2], dtype=x.dtype))


def test_capture_at_given_parameters() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    layers, _ = find_layers(model)
    other = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    params = {k: v.detach().requires_grad_(True) for k, v in other.named_parameters()}
    recs = capture(model, layers, x, loss_objective(F.cross_entropy, y), params)
    got = torch.cat([r.per_sample_grads().flatten(1) for r in recs], 1)
    torch.testing.assert_close(got, _reference(other, layers, x, y), rtol=1e-12, atol=1e-14)


def test_pydvl_objective_gradient() -> None:
    """Per-sample logit gradient of pyDVL's pseudo-loss: sqrt(p) - p * sum(sqrt(p))."""
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(pydvl_objective(logits), logits)
    p = torch.softmax(logits.detach(), dim=1)
    expected = p.sqrt() - p * p.sqrt().sum(1, keepdim=True)
    torch.testing.assert_close(g, expected)
    with pytest.raises(ValueError, match="fisher_type='empirical'"):
        pydvl_objective(torch.zeros(3))


def test_layers_found_and_left_out() -> None:
    model = nn.Sequential(
        nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False)
    )
    model[1].requires_grad_(False)
    layers, excluded = find_layers(model)
    assert [(s.name, s.kind) for s in layers] == [
        ("0", "embedding"),
        ("2", "module"),
        ("3", "linear"),
    ]
    assert layers[1].parameter_names == ("2.weight", "2.bias")
    assert layers[2].parameter_names == ("3.weight",)
    assert excluded == []
    model.append(nn.Conv1d(2, 2, 1))  # a leaf with a matrix weight: left out
    assert find_layers(model)[1] == ["4.weight", "4.bias"]
    model.requires_grad_(False)
    model[4].requires_grad_(True)
    with pytest.raises(ValueError, match=r"no layer the per-layer backends cover.*Conv1d"):
        find_layers(model)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (nn.Sequential(nn.Conv1d(5, 3, 2)), r"Conv1d.*CgInfluence"),
        (nn.GRU(3, 4), r"no layer the per-layer backends cover \(modules with parameters: GRU"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), r"groups=2.*requires_grad_\(False\)"),
    ],
)
def test_unsupported_models(model: nn.Module, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        find_layers(model)
    with pytest.raises(ValueError, match=match):
        EkfacInfluence(model)


def test_frozen_weight_with_trainable_bias_is_refused() -> None:
    layer = nn.Linear(3, 2)
    layer.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="trainable bias but a frozen weight"):
        find_layers(layer)


def test_layer_not_called_as_module() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 3)
            self.bypassed = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(self.used(x), self.bypassed.weight)

    model = Functional().double()
    layers, _ = find_layers(model)
    with pytest.raises(ValueError, match=r"\['bypassed'\].*not called"):
        capture(model, layers, torch.zeros(2, 3, dtype=torch.float64), lambda o: o.sum())


class Unbatched(nn.Module):
    """Calls its convolution on one sample (shape (1, 3, 3)) or on (C, H, W) input."""

    def __init__(self, first_only: bool) -> None:
        super().__init__()
        self.first_only = first_only
        self.conv = nn.Conv2d(1 if first_only else 2, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first_only:
            return self.conv(x[0]).sum()[None].expand(x.shape[0])
        return self.conv(x).flatten(1)


@pytest.mark.parametrize(
    ("first_only", "shape", "match"),
    [
        (True, (2, 1, 3, 3), r"input of shape \(1, 3, 3\) for a batch of 2 samples"),
        (False, (2, 3, 3), r"batched \(n, C, H, W\) inputs"),
    ],
)
def test_input_without_batch_dimension(first_only: bool, shape: tuple, match: str) -> None:
    model = Unbatched(first_only).double()
    layers, _ = find_layers(model)
    x = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        layer_gradients(model, layers, x, torch.zeros(2), lambda o, y: o.mean())


def test_dropout_in_training_mode_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    data = (torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,)))
    with pytest.raises(ValueError, match=r"training mode.*Dropout.*model\.eval\(\)"):
        EkfacInfluence(model, regularization=0.1).fit(data)
    infl = EkfacInfluence(model.eval(), regularization=0.1).fit(data)
    model.train()  # switched back after fit: factors are refused too
    with pytest.raises(ValueError, match="training mode"):
        infl.test_factors(*data)
    # training mode without dropout or batch norm changes nothing: accepted
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().train()
    EkfacInfluence(plain, regularization=0.1).fit(data)


def test_batchnorm_in_training_mode_is_refused_and_stats_kept() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    data = (torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,)))
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="BatchNorm1d"):
        EkfacInfluence(model, regularization=0.1).fit(data)
    torch.testing.assert_close(model[1].running_mean, before)


def test_mean_reduction_is_checked() -> None:
    out, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    check_mean_reduction(F.cross_entropy, out, y)

    def summed(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(o, t, reduction="sum")

    with pytest.raises(ValueError, match="must reduce by mean"):
        check_mean_reduction(summed, out, y)
    with pytest.raises(ValueError, match="scalar tensor"):
        loss_objective(lambda o, t: F.cross_entropy(o, t, reduction="none"), y)(out)


def test_memory_budget_helpers() -> None:
    assert format_bytes(512) == "512 B" and format_bytes(3 * 2**30) == "3.0 GiB"
    with pytest.raises(MemoryBudgetError, match=r"a thing needs 2\.0 KiB.*1\.0 KiB; do less"):
        check_budget(2048, 1024, "a thing", "do less")
    assert isinstance(MemoryBudgetError("x"), MemoryError)
    assert list(sample_chunks(10, 100, 350, "x")) == [
        slice(0, 3),
        slice(3, 6),
        slice(6, 9),
        slice(9, 10),
    ]
    with pytest.raises(MemoryBudgetError, match="for one sample"):
        list(sample_chunks(10, 100, 50, "the gradients"))


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        ([1.0, -2.0, 3.0], 0),
        ([3e38, 3e38, -1.0], 0),  # the sum overflows, the entries are finite
        ([1.0, float("nan"), 2.0], 1),
        ([float("inf"), 1.0, float("-inf")], 2),  # inf - inf: a NaN sum
        ([float("-inf"), 1.0, 2.0], 1),
    ],
)
def test_check_finite(values: list[float], bad: int) -> None:
    t = torch.tensor(values, dtype=torch.float32).repeat(4, 1)
    if bad:
        with pytest.raises(FloatingPointError, match=f"{4 * bad} non-finite"):
            check_finite(t, "the block")
    else:
        assert check_finite(t, "the block") is t
