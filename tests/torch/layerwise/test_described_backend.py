"""``info`` and ``repr`` describe the backend actually used (issue 21): the per-layer backends'
curvature, not the full-parameter settings (``block_structure: full``) they do not use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import infl_array as ia
from infl_array.cli import main
from infl_array.torch import DirectInfluence, EkfacInfluence, ProjectedInfluence

CE = torch.nn.functional.cross_entropy


def data() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), (
        torch.randn(20, 4),
        torch.randint(0, 3, (20,)),
    )


@pytest.mark.parametrize(
    ("backend", "curvature"),
    [
        ("kfac", "per layer, K-FAC Kronecker factors"),
        ("ekfac", "per layer, EK-FAC (eigenvalue-corrected) Kronecker factors"),
        ("projected", "per layer, 'fisher' preconditioner on gradients randomly projected to 8"),
    ],
)
def test_info_names_the_per_layer_curvature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str, curvature: str
) -> None:
    model, xy = data()
    if backend == "projected":
        infl = ProjectedInfluence(model, CE, 0.1, projection_dim=8, preconditioner="fisher")
    else:
        infl = EkfacInfluence(model, regularization=0.1, update_diagonal=backend == "ekfac")
    arr = ia.InfluenceArray.create(tmp_path / "s", infl.fit(xy), test=xy, train=xy)
    assert curvature in repr(arr)
    assert main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    config = json.loads(out[out.index("{") :])["computed_by"]["config"]
    assert curvature in config["curvature"]
    assert "block_structure" not in config and "second_order_mode" not in config
    assert "block_structure" not in out  # nor in the recorded settings (the fingerprints)
    # the recorded settings still match: the same backend reopens the store
    ia.open(tmp_path / "s", infl, test=xy, train=xy)


def test_full_parameter_backends_keep_their_config(tmp_path: Path) -> None:
    model, xy = data()
    arr = ia.InfluenceArray.create(
        tmp_path / "s", DirectInfluence(model, CE, 0.1).fit(xy), test=xy, train=xy
    )
    config = arr.meta.computed_by["config"]
    assert config["block_structure"] == "full" and "curvature" not in config
