"""The PyTorch backend, op by op and layer by layer, on hand-built IR: every function op and the
functional forms of layers against torch, naming, determinism, and errors the backend raises.
"""
from __future__ import annotations

import linecache
import traceback

import pytest
import torch
import torch.nn.functional as F
from tiec.backends.torch import TORCH_EMIT, build_module, generate_source
from tiec.backends.torch.emit_table import Call
from tiec.compiler.ir import frozen
from tiec.dsl.diagnostics import TieError
from torch import nn

from tests.torch_ir import L, N, T, graph, lin, mlp_ir, program


def test_names_never_shadow_builtins_or_imports():
    layers = [lin("class", 2, 2)]
    nodes = [N("Linear", "self", "input", layer="class"), N("relu", "F", "self"), N("add", "torch", "F", "input"),
             N("const", "list", value=2.0), N("mul", "input_", "torch", "list")]
    prog = program(graph("Odd", [("input", T("B", 2))], layers, nodes, ["input_"]))
    m, x = build_module(prog, "Odd"), torch.randn(3, 2)
    assert list(m.state_dict()) == ["class.weight", "class.bias"]
    layer = getattr(m, "class")
    torch.testing.assert_close(m(x), (F.relu(layer(x)) + x) * 2.0)
    src = generate_source(prog, "Odd")
    assert "def forward(self, input__):" in src and "input_ = torch_ * 2.0" in src  # the literal is inlined


def test_live_module_is_deterministic_leaves_rng_alone_and_shows_source_in_tracebacks():
    prog, state = mlp_ir(), torch.random.get_rng_state()
    a, b, c = build_module(prog, "MLP", seed=0), build_module(prog, "MLP", seed=0), build_module(prog, "MLP", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.fc1.weight, b.fc1.weight) and not torch.equal(a.fc1.weight, c.fc1.weight)
    with pytest.raises(RuntimeError) as err:
        a(torch.randn(2, 5))
    frame = next(f for f in traceback.extract_tb(err.value.__traceback__) if f.filename.startswith("<tiec-generated-"))
    assert frame.line == linecache.getline(frame.filename, frame.lineno).strip()
    assert frame.line.startswith("fc1 = self.fc1(x)") and frame.line.endswith("# [B, 256]")


def test_transposed_attention_share_is_rejected_with_a_clear_error():
    layers = [L(f"a{i}", "SelfAttention", embed_dim=4, num_heads=2, causal=False, bias=True) for i in range(2)]
    g = graph("Att", [("x", T("B", "T", 4))], layers, [N("SelfAttention", "y", "x", layer="a1")], ["y"])
    prog = program(g, shares=[(1, ["Att.a0.out_proj.weight", "~Att.a1.out_proj.weight"])])
    with pytest.raises(TieError, match="cannot be shared transposed"):
        generate_source(prog, "Att")


def test_transposed_embedding_share_uses_functional_embedding():
    layers = [lin("proj", 7, 4, bias=False), L("emb", "Embedding", num_embeddings=7, embedding_dim=4)]
    g = graph("E", [("i", T("B", dtype="i64")), ("v", T("B", 7))], layers,
              [N("Embedding", "e", "i", layer="emb"), N("Linear", "p", "v", layer="proj")], ["e", "p"])
    m = build_module(program(g, shares=[(1, ["E.proj.weight", "~E.emb.weight"])]), "E")
    i, v = torch.tensor([0, 6, 3]), torch.randn(3, 7)
    e, p = m(i, v)
    torch.testing.assert_close(e, m.proj.weight.T[i])
    torch.testing.assert_close(p, v @ m.proj.weight.T)
    assert list(m.state_dict()) == ["proj.weight"]


A, B4, IMG = torch.randn(3, 4), torch.randn(3, 4), torch.randn(1, 2, 5, 5)
OP_CASES = [  # op, inputs, attrs, torch reference
    ("add", [A, B4], {}, lambda a, b: a + b), ("sub", [A, B4], {}, lambda a, b: a - b),
    ("mul", [A, B4], {}, lambda a, b: a * b), ("div", [A, B4], {}, lambda a, b: a / b),
    ("matmul", [A, B4.T], {}, lambda a, b: a @ b), ("neg", [A], {}, lambda a: -a),
    ("relu", [A], {}, torch.relu), ("tanh", [A], {}, torch.tanh), ("sigmoid", [A], {}, torch.sigmoid),
    ("silu", [A], {}, F.silu), ("gelu", [A], {"approximate": "none"}, F.gelu),
    ("gelu", [A], {"approximate": "tanh"}, lambda a: F.gelu(a, approximate="tanh")),
    ("softmax", [A], {"dim": 0}, lambda a: a.softmax(0)),
    ("log_softmax", [A], {"dim": -1}, lambda a: a.log_softmax(-1)),
    ("flatten", [IMG], {"start_dim": 1, "end_dim": 2}, lambda x: x.reshape(1, 10, 5)),
    ("reshape", [IMG], {"shape": (0, -1, 5)}, lambda x: x.reshape(1, 10, 5)),
    ("transpose", [A], {"dim0": 0, "dim1": 1}, lambda a: a.T),
    ("max_pool2d", [IMG], {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}, lambda x: F.max_pool2d(x, 2)),
    ("avg_pool2d", [IMG], {"kernel": (3, 3), "stride": (1, 1), "padding": (1, 1)}, lambda x: F.avg_pool2d(x, 3, 1, 1)),
    ("mean", [A], {"dim": 1, "keepdim": True}, lambda a: a.mean(1, keepdim=True)),
    ("concat", [A, B4, A], {"dim": 0}, lambda *xs: torch.cat(xs)),
    ("cosine_similarity", [A, B4], {"dim": 1, "eps": 1e-8}, lambda a, b: F.cosine_similarity(a, b, dim=1)),
    ("positions", [A], {}, lambda a: torch.arange(4)),
]


@pytest.mark.parametrize("op, xs, attrs, ref", OP_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(OP_CASES)])
def test_every_function_op_matches_torch(op, xs, attrs, ref):
    names = [f"x{i}" for i in range(len(xs))]
    g = graph("Op", [(n, T(*x.shape)) for n, x in zip(names, xs)], [], [N(op, "y", *names, **attrs)], ["y"])
    torch.testing.assert_close(build_module(program(g), "Op")(*xs), ref(*xs))


def test_const_and_param_nodes():
    layers = [lin("fc", 4, 4, bias=False)]
    nodes = [N("param", "w", param="fc.weight", transposed=True), N("const", "half", value=0.5),
             N("matmul", "h", "x", "w"), N("mul", "y", "h", "half")]
    m = build_module(program(graph("P", [("x", T("B", 4))], layers, nodes, ["y"])), "P")
    torch.testing.assert_close(m(A), A @ m.fc.weight.T * 0.5)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_layer_norms_and_dropout_match_their_modules(causal):
    layers = [L("ln", "LayerNorm", normalized_shape=4, eps=1e-6), L("rms", "RMSNorm", normalized_shape=4, eps=1e-6),
              L("attn", "SelfAttention", embed_dim=4, num_heads=2, causal=causal, bias=True),
              L("drop", "Dropout", p=0.1)]
    nodes = [N("LayerNorm", "a", "x", layer="ln"), N("RMSNorm", "b", "a", layer="rms"),
             N("SelfAttention", "c", "b", layer="attn"), N("Dropout", "y", "c", layer="drop")]
    m = build_module(program(graph("Blk", [("x", T("B", "T", 4))], layers, nodes, ["y"])), "Blk").eval()
    x = torch.randn(2, 5, 4)
    b = m.rms(m.ln(x))
    mask = torch.ones(5, 5, dtype=torch.bool).triu(1) if causal else None
    torch.testing.assert_close(m(x), m.attn(b, b, b, need_weights=False, attn_mask=mask)[0])
    assert m.ln.eps == 1e-6 and m.rms.eps == 1e-6 and m.drop.p == 0.1 and m.attn.batch_first
    if causal:  # the mask's orientation: the first position sees only itself
        torch.testing.assert_close(m(x)[:, :1], m.attn(b[:, :1], b[:, :1], b[:, :1], need_weights=False)[0])


@pytest.mark.parametrize("kind, mod, x, config", [
    ("Conv2d", nn.Conv2d(2, 3, 3, stride=2, padding=1), IMG, {"stride": 2, "padding": 1}),
    ("LayerNorm", nn.LayerNorm(5, eps=1e-3), torch.randn(2, 5), {"normalized_shape": 5, "eps": 1e-3}),
    ("RMSNorm", nn.RMSNorm(5, eps=1e-3), torch.randn(2, 5), {"normalized_shape": 5, "eps": 1e-3}),
])
def test_functional_layer_rows_match_the_modules(kind, mod, x, config):
    slots = frozen({s: f"mod.{s}" for s, _ in mod.named_parameters()})
    rhs = TORCH_EMIT[kind](Call(("x",), ref="mod", config=frozen(config), slots=slots))
    assert rhs.startswith("F.")
    torch.testing.assert_close(eval(rhs, {"F": F, "mod": mod, "x": x}), mod(x))
