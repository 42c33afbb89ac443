"""Coverage and throughput of the per-layer backends on tiny language models (issue 24).

Builds GPT-2, Llama and GPT-NeoX models from ``transformers`` configs (random weights, no
download), reports the fraction of trainable parameters each backend covers, then times
``fit`` plus the train and test factors of ``EkfacInfluence`` and ``ProjectedInfluence`` on
random token sequences (train tokens per second through fit and factors).

Usage: ``python benchmarks/lm/lm_coverage.py [--n-train 256] [--length 64] [--threads 2]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import transformers

from infl_array.torch import EkfacInfluence, ProjectedInfluence, causal_lm_loss


def configs(vocab: int, width: int, layers: int, positions: int) -> dict[str, torch.nn.Module]:
    small = {"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 0}
    decoder = {
        "num_hidden_layers": layers,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_attention_heads": 4,
        **small,
    }
    gpt2 = {"n_layer": layers, "n_embd": width, "n_head": 4, "n_positions": positions, **small}
    table = {
        "gpt2": ("GPT2Config", "GPT2LMHeadModel", gpt2),
        "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2, **decoder}),
        "neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", decoder),
    }
    return {
        name: getattr(transformers, model)(getattr(transformers, config)(**kwargs))
        for name, (config, model, kwargs) in table.items()
    }


def coverage(vocab: int = 256, width: int = 64, layers: int = 2, length: int = 64) -> dict:
    """Fraction of the trainable parameters each backend covers, per config (fitted on 16
    random sequences), and the ``PartialCoverageWarning`` messages ``fit`` gave (none when all
    are covered)."""
    torch.manual_seed(0)
    x = torch.randint(0, vocab, (16, length), generator=torch.Generator().manual_seed(1))
    out: dict[str, dict] = {}
    for name, model in configs(vocab, width, layers, length).items():
        model.eval()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        out[name] = {"parameters": trainable}
        for cls, kwargs in ((EkfacInfluence, {}), (ProjectedInfluence, {"projection_dim": 512})):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                infl = cls(model, causal_lm_loss, 1.0, batch_size=16, **kwargs).fit((x, x))
            partial = [str(w.message) for w in caught if "Coverage" in type(w.message).__name__]
            out[name][cls.__name__] = {"fraction": infl.coverage.fraction, "warnings": partial}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--projection-dim", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab, (args.n_train, args.length), generator=gen)
    q = x[: args.n_test]
    print(f"{'model':6} {'params':>9} {'covered':>8}  backend     fit+factors  train tok/s")
    for name, model in configs(args.vocab, args.width, args.layers, args.length).items():
        model.eval()
        n_params = sum(p.numel() for p in model.parameters())
        for cls, kwargs in (
            (EkfacInfluence, {"update_diagonal": True}),
            (ProjectedInfluence, {"projection_dim": args.projection_dim}),
        ):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a PartialCoverageWarning would stop here
                infl = cls(model, causal_lm_loss, 0.01, batch_size=64, **kwargs).fit((x, x))
            test_f = infl.test_factors(q, q)
            train_f = infl.train_factors(x, x)
            block = (
                infl.factor_product(test_f, train_f)
                if isinstance(infl, EkfacInfluence)
                else test_f @ train_f.T
            )
            seconds = time.perf_counter() - start
            assert bool(torch.isfinite(block).all())
            tokens = args.n_train * args.length / seconds
            print(
                f"{name:6} {n_params:9d} {infl.coverage.fraction:8.1%}  {cls.__name__[:10]:10} "
                f"{seconds:10.2f}s {tokens:12.0f}"
            )


if __name__ == "__main__":
    main()
