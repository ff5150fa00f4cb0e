"""Computed, non-persistent buffers: RotaryEmbedding's `inv_freq`.

Against transformers' own `LlamaRotaryEmbedding` (built from a config): the same inv_freq, the
same cos and sin for several sequence lengths, theta values and dtypes; the buffer is outside the
state dict but among the named buffers, and follows `.to()` as HF's does; onnxruntime matches
torch through one file for two sequence lengths, with inv_freq an initializer the export computes
(no weights asked for it) and no parameter in `tiec stats`."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiec.compiler.buffers import declared_buffers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

import tiec

TABLES = """
model Tables(head_dim = 8, theta = 10000.0) {
    in x: [B, T, 32]
    rotary_emb = RotaryEmbedding(head_dim, theta)
    c, s = rotary_emb(x)
    return c, s
}
"""

# q rotated as HF's apply_rotary_pos_emb does, in a block that takes the tables as inputs
ROTATE = """
block Rotate(d) {
    in q: [B, H, T, d]
    in c: [T, d]
    in s: [T, d]
    q1, q2 = chunk(q, 2, dim=-1)
    return q * c + concat([-q2, q1], dim=-1) * s
}
model Rope(theta = 500000.0) {
    in q: [B, 2, T, 16]
    rotary_emb = RotaryEmbedding(dim=16, base=theta)
    rotate = Rotate(16)
    c, s = rotary_emb(q)
    return rotate(q, c, s)
}
"""


def hf_rotary(head_dim: int, theta: float) -> LlamaRotaryEmbedding:
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, rope_theta=theta)
    return LlamaRotaryEmbedding(config)


def tables(head_dim: int = 8, theta: float = 10000.0, dtype: str = "f32") -> torch.nn.Module:
    source = TABLES.replace("in x: [", f"in x: {dtype}[")
    return tiec.loads(source, {"head_dim": head_dim, "theta": theta}).torch().eval()


def test_inv_freq_is_a_buffer_outside_the_state_dict():
    module = tables(8, 10000.0)
    assert "rotary_emb.inv_freq" not in module.state_dict()
    assert set(dict(module.named_buffers())) == {"rotary_emb.inv_freq"}
    buffer = module.rotary_emb.inv_freq
    assert buffer.dtype == torch.float32 and buffer.shape == (4,)
    assert torch.equal(buffer, hf_rotary(8, 10000.0).inv_freq)  # the same expression, the same bits
    torch.testing.assert_close(buffer, torch.tensor([10000.0 ** (-2 * i / 8) for i in range(4)]), rtol=1e-6, atol=0)
    program = tiec.loads(TABLES)
    assert [b.name for b in declared_buffers(program.ir, "Tables", persistent_only=False)] == ["rotary_emb.inv_freq"]
    assert declared_buffers(program.ir, "Tables") == ()  # no state-dict buffer
    stats = program.stats()["models"]["Tables"]
    assert (stats["unique_params"], stats["buffer_values"]) == (0, 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_inv_freq_follows_to_as_hf_does(dtype):
    ours, theirs = tables(16, 500000.0), hf_rotary(16, 500000.0)
    ours.to(dtype)
    theirs.to(dtype)
    assert ours.rotary_emb.inv_freq.dtype == theirs.inv_freq.dtype == dtype
    assert torch.equal(ours.rotary_emb.inv_freq, theirs.inv_freq)
    x = torch.randn(1, 9, 32).to(dtype)
    c, s = ours(x)
    want_c, want_s = theirs(x, torch.arange(9)[None])
    assert torch.equal(c, want_c[0]) and torch.equal(s, want_s[0])  # both read the rounded buffer back in f32
    ours.to("meta")
    assert ours.rotary_emb.inv_freq.device.type == "meta"
    assert "rotary_emb.inv_freq" not in ours.state_dict()


@pytest.mark.parametrize("theta", [10000.0, 500000.0, 3.5])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_the_layer_alone_matches_llama_rotary_embedding(theta, dtype):
    head_dim = 16
    ours, theirs = tables(head_dim, theta, dtype), hf_rotary(head_dim, theta)
    torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    for t in (1, 7, 130):
        x = torch.randn(2, t, 32).to(torch_dtype)
        with torch.no_grad():
            c, s = ours(x)
            want_c, want_s = theirs(x, torch.arange(t)[None])
        assert c.dtype == s.dtype == torch_dtype and c.shape == (t, head_dim)
        torch.testing.assert_close(c, want_c[0], rtol=0, atol=0)
        torch.testing.assert_close(s, want_s[0], rtol=0, atol=0)


def test_rotation_matches_hf_and_onnxruntime_through_one_file(tmp_path):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    program = tiec.loads(ROTATE)
    module = program.torch().eval()
    assert dict(module.named_buffers()).keys() == {"rotary_emb.inv_freq"} and not module.state_dict()
    theirs = hf_rotary(16, 500000.0)
    path = tmp_path / "rope.onnx"
    report = program.onnx(path, weights={})  # nothing to give: inv_freq is computed, not loaded
    proto = onnx.load(path)
    assert proto.opset_import[0].version == 18
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["B", "", "T", ""]
    init = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert np.array_equal(init["rotary_emb.inv_freq"], module.rotary_emb.inv_freq.numpy())
    assert report["initializers"] == 1 and report["param_bytes"] == 8 * 4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for t in (5, 33):
        q = torch.randn(3, 2, t, 16, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            got = module(q)
            c, s = theirs(q, torch.arange(t)[None])
            want, _ = apply_rotary_pos_emb(q, q, c, s)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(session.run(None, {"q": q.numpy()})[0], got.numpy(), rtol=1e-3, atol=1e-5)


def test_bf16_tables_are_computed_in_f32_then_cast(tmp_path):
    """The ONNX graph of bf16 tables: Cos and Sin in f32 over the f32 inv_freq, each cast to bf16
    (onnxruntime's CPU provider hands back no bf16 arrays, so the values are checked in f32 above)."""
    program = tiec.loads(TABLES.replace("in x: [", "in x: bf16["), {"head_dim": 8})
    path = tmp_path / "tables.onnx"
    program.onnx(path, weights={})
    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    assert [o.type.tensor_type.elem_type for o in graph.output] == [onnx.TensorProto.BFLOAT16] * 2
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    trig = [n for n in graph.node if n.op_type in ("Cos", "Sin")]
    assert sorted(n.op_type for n in trig) == ["Cos", "Sin"]
    assert all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in trig)
    casts = {n.input[0]: n for n in graph.node if n.op_type == "Cast"}
    assert all(casts[n.output[0]].attribute[0].i == onnx.TensorProto.BFLOAT16 for n in trig)
    assert len([n for n in graph.node if n.op_type == "Concat"]) == 1  # one angle table for both


def test_materialize_computes_the_buffer_of_a_meta_module():
    program = tiec.loads(ROTATE)
    module = program.torch(device="meta")
    assert module.rotary_emb.inv_freq.is_meta
    tiec.materialize(module, device="cpu")
    assert torch.equal(module.rotary_emb.inv_freq, hf_rotary(16, 500000.0).inv_freq)
    assert "rotary_emb.inv_freq" not in module.state_dict()
