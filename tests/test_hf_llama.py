"""examples/llama.tie against transformers' LlamaForCausalLM (tied embeddings, grouped-query
attention, rotary embeddings, RMSNorm) built from a small config: the reference's own state dict
loads strictly, logits match in eval mode, onnxruntime matches torch, the tied matrix is stored
once, and the unique parameters are the reference's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import tiec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "llama.tie"
SIZES = {"vocab": 100, "d": 64, "n_layers": 2, "heads": 4, "kv": 2, "ffn": 128, "eps": 1e-6, "theta": 10000.0}


def reference() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, rope_theta=10000.0, attn_implementation="eager")
    return LlamaForCausalLM(config).eval()


def test_llama_loads_the_reference_checkpoint_and_matches_it(tmp_path):
    hf = reference()
    program = tiec.load(EXAMPLE, SIZES)
    module = program.torch().eval()
    module.load_state_dict(hf.state_dict(), strict=True)
    assert module.lm_head.weight is module.model.embed_tokens.weight
    assert program.stats()["models"]["LlamaForCausalLM"]["unique_params"] == sum(p.numel() for p in hf.parameters())
    tokens = torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens).logits
        got = module(tokens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    path = tmp_path / "llama.onnx"
    program.onnx(path, weights=module)
    params = [i for i in onnx.load(path).graph.initializer if not i.name.startswith("~")]
    assert len([i for i in params if tuple(i.dims) == (100, 64)]) == 1  # the tied matrix, once
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for t in (11, 4):
        tokens = torch.randint(0, 100, (2, t), generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            want = module(tokens).numpy()
        np.testing.assert_allclose(session.run(None, {"input_ids": tokens.numpy()})[0], want, rtol=1e-3, atol=1e-5)
