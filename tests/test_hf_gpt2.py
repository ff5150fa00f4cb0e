"""examples/hf_gpt2.tie against transformers' GPT2LMHeadModel built from a small config: the
reference's own state dict loads strictly, logits match in eval mode, onnxruntime matches torch,
the tied head is stored once, and the unique parameters are the reference's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import tiec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hf_gpt2.tie"
SIZES = {"vocab": 100, "n_positions": 32, "d": 64, "layers": 2, "heads": 4}


def reference() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return GPT2LMHeadModel(config).eval()


def test_hf_gpt2_loads_the_reference_checkpoint_and_matches_it(tmp_path):
    hf = reference()
    program = tiec.load(EXAMPLE, SIZES)
    module = program.torch().eval()
    module.load_state_dict(hf.state_dict(), strict=True)  # HF's own keys, no renaming
    assert module.lm_head.weight is module.transformer.wte.weight
    assert program.stats()["models"]["GPT2LMHeadModel"]["unique_params"] == sum(p.numel() for p in hf.parameters())

    tokens = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens).logits
        got = module(tokens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    path = tmp_path / "gpt2.onnx"
    program.onnx(path, weights=module)
    model = onnx.load(path)
    params = [i for i in model.graph.initializer if not i.name.startswith("~")]
    assert len([i for i in params if tuple(i.dims) == (100, 64)]) == 1  # the tied matrix, once
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for t in (9, 3):  # one file, several lengths
        tokens = torch.randint(0, 100, (2, t), generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            want = module(tokens).numpy()
        out = session.run(None, {"input_ids": tokens.numpy()})[0]
        np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-5)
