"""Half precision, confident models and the data check of the per-layer backends (issue 24)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from layer_reference import float32_default
from torch import nn

from infl_array.torch import CgInfluence, EkfacInfluence, ProjectedInfluence

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def data(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float32)
    return x, torch.randint(0, 3, (n,), generator=gen)


def net() -> nn.Sequential:
    torch.manual_seed(0)
    with float32_default():
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def test_confident_model_whose_softmax_underflows() -> None:
    """pyDVL's curvature pseudo-loss from log_softmax: no NaN where a probability is 0."""
    model = net()
    with torch.no_grad():
        model[2].weight.mul_(300.0)
    x, _ = data()
    with torch.no_grad():
        y = model(x).argmax(1)
        assert float(torch.softmax(model(x), 1).min()) == 0.0
    infl = EkfacInfluence(model, F.cross_entropy, 0.01, update_diagonal=True).fit((x, y))
    assert infl.fisher_type == "pydvl"
    assert bool(torch.isfinite(infl.influences(x[:3], y[:3], x, y)).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_models_accumulate_in_float32(dtype: torch.dtype) -> None:
    x, y = data()
    model = net().to(dtype)
    x = x.to(dtype).float()  # the inputs the half model sees, exactly
    xd = x.double()  # the reference: the same (rounded) model and inputs in float64
    reference = net().to(dtype).double()
    expected = EkfacInfluence(reference, F.cross_entropy, 0.01, update_diagonal=True).fit((xd, y))
    want = expected.influences(xd[:5], y[:5], xd, y)
    tol = 0.01 if dtype == torch.bfloat16 else 0.002
    for infl in (
        EkfacInfluence(model, F.cross_entropy, 0.01, update_diagonal=True).fit((x, y)),
        ProjectedInfluence(model, F.cross_entropy, 0.01, projection_dim=10**4).fit((x, y)),
    ):
        got = infl.test_factors(x[:5], y[:5])
        assert got.dtype == torch.float32 and infl.curvature[0].q_a.dtype == torch.float32
        if isinstance(infl, EkfacInfluence):
            got = infl.factor_product(got, infl.train_factors(x, y))
        else:
            got = got @ infl.train_factors(x, y).T
        assert float((got.double() - want).abs().max() / want.abs().max()) < tol


class Branchy(nn.Module):
    """``.item()`` and a Python branch on a tensor value: no vmap, fine for the capture."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.abs().max().item() > 100.0:
            h = h / 100.0
        return self.b(torch.tanh(h))


def test_data_check_uses_the_capture_pass() -> None:
    x, y = data()
    with float32_default():
        model = Branchy().double().eval()
    xd = x.double()
    infl = EkfacInfluence(model, F.cross_entropy, 0.01).fit((xd, y))
    assert infl.influences(xd[:2], y[:2], xd, y).shape == (2, 30)
    ProjectedInfluence(model, F.cross_entropy, 0.01, projection_dim=32).fit((xd, y))
    with pytest.raises(ValueError, match=r"vmap.*per-layer backends \(EkfacInfluence") as err:
        CgInfluence(model, F.cross_entropy, 0.01).fit((xd, y))
    assert "deterministic functions" not in str(err.value)


def test_vmap_performance_warning_is_not_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under warnings-as-errors (this suite's setting) torch's vmap warning passes the check."""
    from infl_array.torch.full.functional import FlatModel

    original = FlatModel.per_sample_grads

    def warns(self: FlatModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        warnings.warn(
            "There is a performance drop because we have not yet implemented the batching rule "
            "for aten::something.",
            UserWarning,
            stacklevel=2,
        )
        return original(self, x, y)

    monkeypatch.setattr(FlatModel, "per_sample_grads", warns)
    x, y = data()
    CgInfluence(net().double(), F.cross_entropy, 0.01).check_data(x.double(), y)


@pytest.mark.parametrize("backend", [EkfacInfluence, ProjectedInfluence])
def test_pydvl_fisher_is_refused_for_language_model_logits(backend: type) -> None:
    # pyDVL's pseudo-loss takes the softmax over dim 1 (cross_entropy's class axis); a causal
    # LM's (n, T, vocab) logits have the vocabulary last, so dim 1 would be the positions.
    from infl_array.torch import causal_lm_loss

    model = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8))
    with pytest.raises(ValueError, match="fisher_type='empirical'"):
        backend(model, causal_lm_loss, fisher_type="pydvl")
    assert backend(model, causal_lm_loss).fisher_type == "empirical"
