"""A backend whose model's weights changed since ``fit`` is refused, naming the parameters
(issue 21); a store opened with a refitted backend names the parameters that differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import infl_array as ia
from infl_array.torch import DirectInfluence, EkfacInfluence


def problem() -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    return model.eval(), (x, y)


@pytest.mark.parametrize("backend", ["direct", "ekfac"])
def test_reopening_with_the_old_fit_after_editing_weights_is_refused(
    tmp_path: Path, backend: str
) -> None:
    model, data = problem()
    if backend == "direct":
        infl = DirectInfluence(model, torch.nn.functional.cross_entropy, regularization=0.1)
    else:
        infl = EkfacInfluence(model, regularization=0.1)
    infl.fit(data)
    ia.InfluenceArray.create(tmp_path / "s", infl, test=data, train=data)
    with torch.no_grad():
        model[2].bias.add_(0.5)  # trained further, say, without fitting again
    assert infl.changed_parameters() == ["2.bias"]
    with pytest.raises(ia.StaleCacheError, match=r"changed since fit \(2\.bias\)") as info:
        ia.open(tmp_path / "s", infl, test=data, train=data)
    assert "call .fit(train_data) again" in str(info.value)
    with pytest.raises(ia.StaleCacheError, match=r"2\.bias"):
        ia.InfluenceArray.create(tmp_path / "t", infl, test=data, train=data)
    assert not (tmp_path / "t").exists()


def test_a_refitted_backend_is_refused_naming_the_parameter(tmp_path: Path) -> None:
    model, data = problem()
    infl = DirectInfluence(model, torch.nn.functional.cross_entropy, regularization=0.1)
    ia.InfluenceArray.create(tmp_path / "s", infl.fit(data), test=data, train=data)
    with torch.no_grad():
        model[0].weight[1, 2] += 0.25
    infl.fit(data)  # refitted: consistent with itself, not with the store
    assert infl.changed_parameters() == []
    with pytest.raises(ia.StaleCacheError, match=r"parameters: store has 0\.weight=") as info:
        ia.open(tmp_path / "s", infl, test=data, train=data)
    assert "parameters" in info.value.differences
    assert "0.bias" not in str(info.value) and "2.weight" not in str(info.value)
