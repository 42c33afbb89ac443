"""Per-layer backends on tiny ``transformers`` language models built from configs (issue 24).

GPT-2 (``Conv1D`` layers, tied ``lm_head``/``wte``, position embedding), Llama (RMS norms,
untied head) and GPT-NeoX: every trainable parameter covered, per-sample layer gradients equal
plain autograd's, duplicated sequences rank first, mapping samples with padding, half
precision. No weights are downloaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from layer_reference import float32_default, layout_grads
from torch import nn

import infl_array as ia
from infl_array.torch import EkfacInfluence, ProjectedInfluence, causal_lm_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 40


SMALL = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0}
DECODER = {"num_hidden_layers": 2, "hidden_size": 16, "intermediate_size": 24, **SMALL}
CONFIGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_layer": 2, "n_embd": 16, "n_head": 2, **SMALL}),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"num_attention_heads": 2, "num_key_value_heads": 1, **DECODER},
    ),
    "neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"num_attention_heads": 2, **DECODER}),
}


def maker(name: str) -> Callable[[], nn.Module]:
    config, model, kwargs = CONFIGS[name]
    return lambda: getattr(transformers, model)(getattr(transformers, config)(**kwargs))


MODELS = {name: maker(name) for name in CONFIGS}
gpt2, llama = MODELS["gpt2"], MODELS["llama"]


def build(make: Callable[[], nn.Module], dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    with float32_default():
        return make().to(dtype).eval()


def sequences(n: int, seed: int, length: int = 6) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_covered_and_exact(name: str) -> None:
    model = build(MODELS[name])
    x = sequences(4, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PartialCoverageWarning
        infl = EkfacInfluence(model, causal_lm_loss, 0.01).fit((x, x))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(infl.covered_parameters) == sorted(trainable)
    assert infl.excluded_parameters == [] and infl.coverage.fraction == 1.0
    if name == "gpt2":
        kinds = {spec.kind for spec in infl.layers}
        assert {"conv1d", "embedding", "module", "linear"} <= kinds
        head = next(spec for spec in infl.layers if spec.name == "lm_head")
        assert head.parameter_names == ("transformer.wte.weight",)  # tied: counted once
    got = infl.layer_gradients(x, x)
    expected = layout_grads(model, infl.layers, causal_lm_loss, x, x)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_duplicated_sequence_ranks_first(name: str) -> None:
    model = build(MODELS[name])
    x = sequences(24, 2)
    x = torch.cat([x, x[:3]])  # 24..26 duplicate 0..2
    for infl in (
        EkfacInfluence(model, causal_lm_loss, 0.01, update_diagonal=True).fit((x, x)),
        ProjectedInfluence(model, causal_lm_loss, 0.01, projection_dim=512).fit((x, x)),
    ):
        scores = infl.test_factors(x[:3], x[:3])
        if isinstance(infl, EkfacInfluence):
            scores = infl.factor_product(scores, infl.train_factors(x, x))
        else:
            scores = scores @ infl.train_factors(x, x).T
        for i in range(3):
            assert set(scores[i].topk(2).indices.tolist()) == {i, 24 + i}
            assert scores[i, i] > 0


def test_mapping_samples_padding_never_contributes() -> None:
    model = build(gpt2)
    ids = sequences(8, 3)
    mask = torch.ones_like(ids)
    mask[:3, 4:] = 0  # right padding
    values = []
    for pad in (1, 7):
        padded = ids.clone()
        padded[:3, 4:] = pad
        batch = {"input_ids": padded, "attention_mask": mask}
        infl = EkfacInfluence(model, causal_lm_loss, 0.01, update_diagonal=True).fit(batch)
        assert infl._require_fit().input_keys == ("input_ids", "attention_mask")
        labels = padded.masked_fill(mask == 0, -100)
        values.append(infl.influences(batch, labels, batch, labels))
    torch.testing.assert_close(values[0], values[1], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"fitted on \['input_ids', 'attention_mask'\]"):
        infl.influences({"input_ids": ids}, ids, {"input_ids": ids}, ids)


def test_dataset_of_mappings() -> None:
    model = build(llama)
    ids = sequences(6, 4)

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {
                "input_ids": ids[i],
                "attention_mask": torch.ones_like(ids[i]),
                "labels": ids[i],
            }

    loader = torch.utils.data.DataLoader(Items(), batch_size=4)
    a = ProjectedInfluence(model, causal_lm_loss, 0.01, projection_dim=256).fit(loader)
    b = ProjectedInfluence(model, causal_lm_loss, 0.01, projection_dim=256).fit((ids, ids))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch.testing.assert_close(a.train_factors(batch, ids), b.train_factors(ids, ids))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_in_float32_close_to_float32(dtype: torch.dtype) -> None:
    x = sequences(16, 5)
    reference = EkfacInfluence(build(llama, torch.float32), causal_lm_loss, 0.01).fit((x, x))
    expected = reference.influences(x[:4], x[:4], x, x)
    infl = EkfacInfluence(build(llama, dtype), causal_lm_loss, 0.01).fit((x, x))
    assert infl.work_dtype == torch.float32
    got = infl.influences(x[:4], x[:4], x, x)
    assert got.dtype == torch.float32
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert float((got - expected).abs().max() / expected.abs().max()) < tol
    proj = ProjectedInfluence(build(gpt2, dtype), causal_lm_loss, 0.01, projection_dim=128)
    assert proj.fit((x, x)).train_factors(x, x).dtype == torch.float32


def test_store_with_mapping_samples_in_bfloat16(tmp_path: Path) -> None:
    """The array front end end to end: a loader of mappings, a bfloat16 GPT-2, reopened."""
    ids = sequences(8, 6)
    mask = torch.ones_like(ids)
    mask[:2, 4:] = 0

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": ids[i], "attention_mask": mask[i]}

    loader = torch.utils.data.DataLoader(Items(), batch_size=4)
    infl = EkfacInfluence(build(gpt2, torch.bfloat16), causal_lm_loss, 0.01).fit(loader)
    store = tmp_path / "lm"
    arr = ia.InfluenceArray.create(store, infl, test=Items(), train=loader, block_shape=(4, 4))
    first = np.asarray(arr[:3])
    arr.fill(progress=False)
    again = ia.open(store, infl, test=Items(), train=loader)
    np.testing.assert_array_equal(np.asarray(again[:3]), first)
    assert np.asarray(again[:]).shape == (8, 8) and (first.argmax(1) == [0, 1, 2]).all()
