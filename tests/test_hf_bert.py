"""examples/hf_bert.tie against transformers' BertModel (with its pooler) built from a small config:
the reference's own state dict loads strictly, outputs match in eval mode with padding masks,
onnxruntime matches torch, and the unique parameters are the reference's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import BertConfig, BertModel

import tiec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hf_bert.tie"
SIZES = {"vocab": 100, "n_positions": 40, "d": 32, "layers": 2, "heads": 4, "ffn": 64}


def reference() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, attn_implementation="eager")
    return BertModel(config).eval()


def batch(b: int, t: int):
    gen = torch.Generator().manual_seed(t)
    ids = torch.randint(0, 100, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.int64)
    mask[0, t // 2:] = 0  # the first sequence is padded
    return ids, mask, torch.randint(0, 2, (b, t), generator=gen)


def test_hf_bert_loads_the_reference_checkpoint_and_matches_it(tmp_path):
    hf = reference()
    program = tiec.load(EXAMPLE, SIZES)
    module = program.torch().eval()
    module.load_state_dict(hf.state_dict(), strict=True)  # HF's own keys, no renaming
    assert program.stats()["models"]["BertModel"]["unique_params"] == sum(p.numel() for p in hf.parameters())
    ids, mask, types = batch(2, 7)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden, pooled = module(ids, mask, types)
    torch.testing.assert_close(hidden, want.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, want.pooler_output, rtol=1e-5, atol=1e-5)

    path = tmp_path / "bert.onnx"
    program.onnx(path, weights=module)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t in ((2, 7), (3, 4)):
        ids, mask, types = batch(b, t)
        with torch.no_grad():
            want = [v.numpy() for v in module(ids, mask, types)]
        outs = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                  "token_type_ids": types.numpy()})
        for have, ref in zip(outs, want, strict=True):
            np.testing.assert_allclose(have, ref, rtol=1e-3, atol=1e-5)
