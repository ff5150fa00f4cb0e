"""examples/llama.tie's rotary embedding against transformers' LlamaForCausalLM: the buffer sits
where HF's does, outside both state dicts, and the ONNX file holds it once as a computed
initializer. (A file of its own, after tests/test_compiler_passes.py: building a transformers
model adds `smart_apply` to every `torch.nn.Module`.)"""
from __future__ import annotations

import numpy as np
import onnx
import torch

import tiec
from tests.test_hf_llama import EXAMPLE, SIZES, reference


def test_llama_holds_hf_rotary_embedding_where_hf_does(tmp_path):
    """examples/llama.tie: `model.rotary_emb.inv_freq` is HF's buffer (not in either state dict),
    and the ONNX file holds it as one computed initializer beside the parameters, which it stores
    once each (file bytes ÷ unique parameter bytes close to 1)."""
    hf = reference()
    program = tiec.load(EXAMPLE, SIZES)
    module = program.torch().eval()
    module.load_state_dict(hf.state_dict(), strict=True)
    assert "model.rotary_emb.inv_freq" not in module.state_dict() and "model.rotary_emb.inv_freq" not in hf.state_dict()
    ours = dict(module.named_buffers())["model.rotary_emb.inv_freq"]
    assert torch.equal(ours, hf.model.rotary_emb.inv_freq)
    path = tmp_path / "llama.onnx"
    report = program.onnx(path, weights=hf.state_dict())  # HF's checkpoint, which has no inv_freq
    init = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    assert np.array_equal(init["model.rotary_emb.inv_freq"], ours.numpy())
    unique_bytes = 4 * program.stats()["models"]["LlamaForCausalLM"]["unique_params"]
    assert report["param_bytes"] == unique_bytes + ours.numel() * 4
    assert 1.0 < report["bytes"] / unique_bytes < 1.05
