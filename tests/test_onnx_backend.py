"""ONNX backend: hand-built IRs exported, checked, and run in onnxruntime against PyTorch.

Each reference is written independently with torch.nn.functional / nn.MultiheadAttention on the
same weights; each model runs at two batch sizes (and two sequence lengths where there is one)
through one file, so dynamic dims stay dynamic.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiec.compiler import ir as tir

from tests.onnx_ir import (
    attention_stack,
    close,
    exported,
    floats,
    graph,
    init_names,
    layer,
    mlp,
    n,
    op_types,
    program,
    random_weights,
    run,
    share,
    slot,
    ty,
)


def test_mlp_matches_torch_at_two_batch_sizes(tmp_path):
    ir = mlp()
    w = random_weights(ir)
    path, proto, info = exported(tmp_path, ir, w)
    assert op_types(proto).count("Gemm") == 2 and info["initializers"] == 4
    x_in = proto.graph.input[0]
    assert x_in.name == "x" and [d.dim_param or d.dim_value for d in x_in.type.tensor_type.shape.dim] == ["B", 20]
    assert [o.name for o in proto.graph.output] == ["y"]
    assert proto.producer_name == "tiec"
    rng = np.random.default_rng(1)
    for batch in (1, 7):
        x = floats(rng, batch, 20)
        ref = F.log_softmax(F.linear(F.relu(F.linear(torch.from_numpy(x), *[torch.from_numpy(w[k]) for k in
                                                     ("fc1.weight", "fc1.bias")])), torch.from_numpy(w["fc2.weight"]),
                                     torch.from_numpy(w["fc2.bias"])), dim=-1)
        close(run(path, {"x": x})[0], ref)


def autoencoder(seq: bool) -> tir.ProgramIR:
    x = "f32[B, T, 32]" if seq else "f32[B, 32]"
    g = graph("M", {"x": x}, [layer("enc", "Linear", in_features=32, out_features=8, bias=True),
                              layer("dec", "Linear", in_features=8, out_features=32, bias=True)],
              [n("Linear", "h", "x", layer="enc"), n("sigmoid", "z", "h"), n("Linear", "y", "z", layer="dec")], ["y"])
    code = x.replace("32", "8")
    return program(g, {"h": code, "z": code, "y": x}, [share(3, ("M.enc.weight", False), ("M.dec.weight", True))])


@pytest.mark.parametrize("seq", [False, True])
def test_tied_autoencoder_has_one_weight_initializer(tmp_path, seq):
    ir = autoencoder(seq)
    w = random_weights(ir)
    assert set(w) == {"enc.weight", "enc.bias", "dec.bias"}
    path, proto, info = exported(tmp_path, ir, w)
    assert sorted(init_names(proto)) == ["dec.bias", "enc.bias", "enc.weight"]
    param_bytes = sum(a.nbytes for a in w.values())
    assert info["param_bytes"] == param_bytes
    assert os.path.getsize(path) == info["bytes"] <= 1.001 * param_bytes + 64 * 1024
    assert info["overhead"] < 2048
    if seq:  # enc reads W through Gemm(transB) on x flattened to 2-D; dec (transposed share) reads W itself
        assert "Transpose" not in op_types(proto)
        assert [(node.input[1], node.attribute[0].i) for node in proto.graph.node if node.op_type == "Gemm"] == [
            ("enc.weight", 1)]
        assert [node.input[1] for node in proto.graph.node if node.op_type == "MatMul"] == ["enc.weight"]
    else:
        assert [(node.input[1], node.attribute[0].i) for node in proto.graph.node if node.op_type == "Gemm"] == [
            ("enc.weight", 1), ("enc.weight", 0)]
    rng = np.random.default_rng(2)
    W = torch.from_numpy(w["enc.weight"])
    for shape in ([(2, 32), (5, 32)] if not seq else [(2, 3, 32), (4, 6, 32)]):
        x = floats(rng, *shape)
        z = torch.sigmoid(F.linear(torch.from_numpy(x), W, torch.from_numpy(w["enc.bias"])))
        close(run(path, {"x": x})[0], F.linear(z, W.T, torch.from_numpy(w["dec.bias"])))


def test_conv_pool_flatten_cosine_similarity(tmp_path):
    g = graph("M", {"img": "f32[B, 3, 8, 8]", "ref": "f32[B, 64]"},
              [layer("conv", "Conv2d", in_channels=3, out_channels=4, kernel_size=3, stride=1, padding=1, bias=True)],
              [n("Conv2d", "c", "img", layer="conv"), n("relu", "r", "c"),
               n("max_pool2d", "p", "r", kernel=(2, 2), stride=(2, 2), padding=(0, 0)),
               n("avg_pool2d", "q", "p", kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
               n("flatten", "mid", "q", start_dim=1, end_dim=2),
               n("flatten", "f", "mid", start_dim=1, end_dim=-1),
               n("cosine_similarity", "s", "f", "ref", dim=1, eps=1e-8)], ["s", "mid"])
    ir = program(g, {"c": "f32[B, 4, 8, 8]", "r": "f32[B, 4, 8, 8]", "p": "f32[B, 4, 4, 4]", "q": "f32[B, 4, 4, 4]",
                     "mid": "f32[B, 16, 4]", "f": "f32[B, 64]", "s": "f32[B]"})
    w = random_weights(ir)
    path, proto, _ = exported(tmp_path, ir, w)
    assert "Flatten" not in op_types(proto)
    rng = np.random.default_rng(3)
    for batch in (2, 5):
        img, ref = floats(rng, batch, 3, 8, 8), floats(rng, batch, 64)
        c = F.relu(F.conv2d(torch.from_numpy(img), torch.from_numpy(w["conv.weight"]), torch.from_numpy(w["conv.bias"]),
                            stride=1, padding=1))
        q = F.avg_pool2d(F.max_pool2d(c, 2, 2), 3, 1, 1, count_include_pad=True)
        s, mid = run(path, {"img": img, "ref": ref})
        close(mid, q.flatten(1, 2))
        close(s, F.cosine_similarity(q.flatten(1), torch.from_numpy(ref), dim=1, eps=1e-8))


def test_embedding_layernorm_and_tied_readout(tmp_path):
    g = graph("M", {"ids": "i64[B, T]"},
              [layer("embed", "Embedding", num_embeddings=50, embedding_dim=16),
               layer("pos", "Embedding", num_embeddings=32, embedding_dim=16),
               layer("ln", "LayerNorm", normalized_shape=16, eps=1e-5)],
              [n("Embedding", "tok", "ids", layer="embed"), n("positions", "t", "ids"),
               n("Embedding", "pe", "t", layer="pos"), n("add", "h", "tok", "pe"), n("LayerNorm", "hn", "h", layer="ln"),
               n("param", "wt", param="embed.weight", transposed=True), n("matmul", "logits", "hn", "wt")], ["logits"])
    d3 = "f32[B, T, 16]"
    ir = program(g, {"tok": d3, "t": "i64[T]", "pe": "f32[T, 16]", "h": d3, "hn": d3, "wt": "f32[16, 50]",
                     "logits": "f32[B, T, 50]"})
    w = random_weights(ir)
    path, proto, _ = exported(tmp_path, ir, w)
    assert init_names(proto).count("embed.weight") == 1 and "LayerNormalization" in op_types(proto)
    rng = np.random.default_rng(4)
    for batch, length in ((1, 5), (3, 9)):
        ids = rng.integers(0, 50, (batch, length)).astype(np.int64)
        E, P = torch.from_numpy(w["embed.weight"]), torch.from_numpy(w["pos.weight"])
        h = F.embedding(torch.from_numpy(ids), E) + F.embedding(torch.arange(length), P)
        hn = F.layer_norm(h, (16,), torch.from_numpy(w["ln.weight"]), torch.from_numpy(w["ln.bias"]), 1e-5)
        close(run(path, {"ids": ids})[0], hn @ E.T)


# One graph per function op: (inputs, nodes, types of every node value, torch reference).
R = "f32[B, 3, 4]"
FUNCTION_OPS = {
    "add_broadcast": ({"a": R, "b": "f32[4]"}, [n("add", "y", "a", "b")], {"y": R}, lambda a, b: a + b),
    "sub_const": ({"a": R}, [n("const", "k", value=1.5), n("sub", "y", "a", "k")], {"y": R}, lambda a: a - 1.5),
    "mul_const_left": ({"a": R}, [n("const", "k", value=2), n("mul", "y", "k", "a")], {"y": R}, lambda a: 2 * a),
    "div": ({"a": R, "b": R}, [n("div", "y", "a", "b")], {"y": R}, lambda a, b: a / b),
    "matmul": ({"a": R, "b": "f32[4, 2]"}, [n("matmul", "y", "a", "b")], {"y": "f32[B, 3, 2]"}, lambda a, b: a @ b),
    "neg": ({"a": R}, [n("neg", "y", "a")], {"y": R}, lambda a: -a),
    "relu": ({"a": R}, [n("relu", "y", "a")], {"y": R}, F.relu),
    "tanh": ({"a": R}, [n("tanh", "y", "a")], {"y": R}, torch.tanh),
    "sigmoid": ({"a": R}, [n("sigmoid", "y", "a")], {"y": R}, torch.sigmoid),
    "silu": ({"a": R}, [n("silu", "y", "a")], {"y": R}, F.silu),
    "gelu": ({"a": R}, [n("gelu", "y", "a", approximate="none")], {"y": R}, F.gelu),
    "gelu_tanh": ({"a": R}, [n("gelu", "y", "a", approximate="tanh")], {"y": R},
                  lambda a: F.gelu(a, approximate="tanh")),
    "softmax": ({"a": R}, [n("softmax", "y", "a", dim=1)], {"y": R}, lambda a: F.softmax(a, dim=1)),
    "log_softmax": ({"a": R}, [n("log_softmax", "y", "a", dim=-1)], {"y": R}, lambda a: F.log_softmax(a, dim=-1)),
    "flatten_tail": ({"a": R}, [n("flatten", "y", "a", start_dim=1, end_dim=-1)], {"y": "f32[B, 12]"},
                     lambda a: a.flatten(1)),
    "flatten_leading": ({"a": R}, [n("flatten", "y", "a", start_dim=0, end_dim=1)], {"y": "f32[B*3, 4]"},
                        lambda a: a.flatten(0, 1)),
    "flatten_dynamic_tail": ({"a": "f32[2, 3, B]"}, [n("flatten", "y", "a", start_dim=0, end_dim=1)],
                             {"y": "f32[6, B]"}, lambda a: a.flatten(0, 1)),
    "reshape": ({"a": R}, [n("reshape", "y", "a", shape=(0, -1, 2))], {"y": "f32[B, 6, 2]"},
                lambda a: a.reshape(a.shape[0], -1, 2)),
    "transpose": ({"a": R}, [n("transpose", "y", "a", dim0=-1, dim1=0)], {"y": "f32[4, 3, B]"},
                  lambda a: a.transpose(-1, 0)),
    "max_pool2d": ({"a": "f32[B, 2, 7, 7]"}, [n("max_pool2d", "y", "a", kernel=(3, 3), stride=(2, 2), padding=(1, 1))],
                   {"y": "f32[B, 2, 4, 4]"}, lambda a: F.max_pool2d(a, 3, 2, 1)),
    "avg_pool2d": ({"a": "f32[B, 2, 7, 7]"}, [n("avg_pool2d", "y", "a", kernel=(3, 3), stride=(2, 2), padding=(1, 1))],
                   {"y": "f32[B, 2, 4, 4]"}, lambda a: F.avg_pool2d(a, 3, 2, 1)),
    "mean": ({"a": R}, [n("mean", "y", "a", dim=1, keepdim=False)], {"y": "f32[B, 4]"}, lambda a: a.mean(1)),
    "mean_keepdim": ({"a": R}, [n("mean", "y", "a", dim=-1, keepdim=True)], {"y": "f32[B, 3, 1]"},
                     lambda a: a.mean(-1, keepdim=True)),
    "concat": ({"a": R, "b": "f32[B, 3, 2]"}, [n("concat", "y", "a", "b", dim=-1)], {"y": "f32[B, 3, 6]"},
               lambda a, b: torch.cat([a, b], -1)),
    "cosine_similarity": ({"a": R, "b": R}, [n("cosine_similarity", "y", "a", "b", dim=-1, eps=1e-8)],
                          {"y": "f32[B, 3]"}, lambda a, b: F.cosine_similarity(a, b, dim=-1)),
    "positions_plus_const": ({"a": R}, [n("positions", "p", "a"), n("const", "one", value=1),
                                        n("add", "y", "p", "one")], {"p": "i64[4]", "y": "i64[4]"},
                             lambda a: torch.arange(a.shape[-1]) + 1),
}


@pytest.mark.parametrize("name", sorted(FUNCTION_OPS))
def test_function_op_matches_torch(tmp_path, name):
    inputs, nodes, types, ref = FUNCTION_OPS[name]
    ir = program(graph("M", inputs, [], nodes, ["y"]), types)
    path, proto, _ = exported(tmp_path, ir, {})
    out_type = proto.graph.output[0].type.tensor_type
    assert [d.dim_param or d.dim_value for d in out_type.shape.dim] == list(ty(types["y"]).shape)
    rng = np.random.default_rng(5)
    for batch in (1, 3):
        feeds = {k: floats(rng, *[batch if d == "B" else d for d in ty(v).shape]) for k, v in inputs.items()}
        close(run(path, feeds)[0], ref(*[torch.from_numpy(v) for v in feeds.values()]))


@pytest.mark.parametrize("eps", [1e-6, None])
def test_rms_norm(tmp_path, eps):
    g = graph("M", {"x": "f32[B, T, 16]"}, [layer("norm", "RMSNorm", normalized_shape=16, eps=eps)],
              [n("RMSNorm", "y", "x", layer="norm")], ["y"])
    ir = program(g, {"y": "f32[B, T, 16]"})
    w = random_weights(ir)
    path, _, _ = exported(tmp_path, ir, w)
    rng = np.random.default_rng(6)
    for shape in ((1, 2, 16), (4, 5, 16)):
        x = floats(rng, *shape) * 1e-3  # small enough that eps matters
        close(run(path, {"x": x})[0], F.rms_norm(torch.from_numpy(x), (16,), torch.from_numpy(w["norm.weight"]), eps))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_self_attention_matches_multihead_attention(tmp_path, causal, bias):
    ir = attention_stack(causal, bias, depth=2)
    w = random_weights(ir)
    path, proto, _ = exported(tmp_path, ir, w)
    assert op_types(proto).count("Greater") == (1 if causal else 0)  # one mask for both layers
    mhas = []
    for i in range(2):
        mha = torch.nn.MultiheadAttention(16, 4, bias=bias, batch_first=True).eval()
        mha.load_state_dict({k: slot(ir, w, f"attn{i}.{k}") for k in mha.state_dict()})
        mhas.append(mha)
    rng = np.random.default_rng(7)
    for batch, length in ((1, 5), (3, 8)):
        x = floats(rng, batch, length, 16)
        h = torch.from_numpy(x)
        mask = torch.triu(torch.full((length, length), -math.inf), 1) if causal else None
        with torch.no_grad():
            for mha in mhas:
                h = h + mha(h, h, h, attn_mask=mask, need_weights=False)[0]
        close(run(path, {"x": x})[0], h)




def test_integer_tensor_promotes_to_float_as_in_torch(tmp_path):
    """i64 * 0.5 and i64 / 2 are f32 in torch: the tensor is cast, the literal never truncated; a
    node ir.types does not cover ("h") promotes by the same rule."""
    nodes = [n("const", "half", value=0.5), n("mul", "a", "p", "half"), n("const", "two", value=2),
             n("div", "b", "p", "two"), n("mul", "c", "p", "two"), n("const", "one", value=1),
             n("sub", "d", "one", "p"), n("div", "h", "p", "two"), n("relu", "e", "h")]
    types = {"a": "f32[B, 3]", "b": "f32[B, 3]", "c": "i64[B, 3]", "d": "i64[B, 3]", "e": "f32[B, 3]"}
    ir = program(graph("M", {"p": "i64[B, 3]"}, [], nodes, list("abcde")), types)
    path, _, _ = exported(tmp_path, ir, {})
    p = np.array([[1, 2, 3], [-4, 5, 7]], dtype=np.int64)
    t = torch.from_numpy(p)
    for got, want in zip(run(path, {"p": p}), (t * 0.5, t / 2, t * 2, 1 - t, torch.relu(t / 2))):
        assert got.dtype == want.numpy().dtype
        np.testing.assert_array_equal(got, want.numpy())
