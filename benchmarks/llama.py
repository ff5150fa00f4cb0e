"""Llama-like forward on CPU: tiec's module of examples/llama.tie against transformers'
LlamaForCausalLM with sdpa attention, holding the same weights (loaded strictly), in one run.

4 layers, d 512, 8 query and 4 key/value heads, FFN 1408, vocabulary 32000, batch 4 × 128, eval
mode, no gradients; fp32, and bf16 (tiec's spec compiled with `dtype="bf16"`, the reference
converted with `.to(torch.bfloat16)`, the same weights). Calls alternate; a figure is the median
over rounds of (tiec / transformers). Goal ≤ 1.0 for both.
"""
from __future__ import annotations

from pathlib import Path

import tiec
import torch

from common import Figure, alternate

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "llama.tie"
SIZES = {"vocab": 32000, "d": 512, "n_layers": 4, "heads": 8, "kv": 4, "ffn": 1408, "eps": 1e-6, "theta": 10000.0}
GOAL = 1.0


def modules(sizes: dict, dtype: str = "f32"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=sizes["vocab"], hidden_size=sizes["d"], intermediate_size=sizes["ffn"],
                         num_hidden_layers=sizes["n_layers"], num_attention_heads=sizes["heads"],
                         num_key_value_heads=sizes["kv"], rms_norm_eps=sizes["eps"], rope_theta=sizes["theta"],
                         tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config).eval().to({"f32": torch.float32, "bf16": torch.bfloat16}[dtype])
    ours = tiec.load(EXAMPLE, sizes, dtype=dtype).torch().eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return ours, hf


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    sizes = dict(SIZES, n_layers=2, d=256, heads=4, kv=2, ffn=704) if quick else SIZES
    batch, seq, rounds = (2, 64, 3) if quick else (4, 128, 6)
    tokens = torch.randint(0, sizes["vocab"], (batch, seq), generator=torch.Generator().manual_seed(0))
    figures = []
    for dtype in ("f32", "bf16"):
        a, b = modules(sizes, dtype)
        with torch.inference_mode():
            diff = (a(tokens).float() - b(tokens).logits.float()).abs().max().item()
            pair = alternate(lambda b=b: b(tokens), lambda a=a: a(tokens), rounds)
        name = "fp32" if dtype == "f32" else "bf16"
        figures.append(Figure(f"llama forward {name}: tiec / transformers (sdpa)", pair.paired_ratio, GOAL, "<=",
                              "transformers LlamaForCausalLM, sdpa", note=f"{sizes['n_layers']} layers, d {sizes['d']}, "
                              f"tokens [{batch}, {seq}]; max |diff| {diff:.2e}; rounds {pair.spread()}",
                              details=pair.summary()))
    return figures, {"settings": {"sizes": sizes, "batch": batch, "seq": seq, "rounds": rounds}}
