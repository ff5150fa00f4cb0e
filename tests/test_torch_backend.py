"""The PyTorch backend against hand-written PyTorch, on hand-built IR.

Each test builds a `ProgramIR` directly (no parser, no passes) and checks the emitted or live
module: state-dict keys against the hand-written equivalent, outputs and gradients against a
reference computation, one tensor per share group through deepcopy/.to/save/load.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import linecache
import traceback
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from tiec.backends.torch import TORCH_EMIT, build_module, generate_source
from tiec.backends.torch.emit_table import Call
from tiec.compiler import ir
from tiec.compiler.ir import Graph, Layer, Node, TensorType, frozen
from tiec.dsl.diagnostics import NOWHERE, Source, TieError
from torch import nn

S = NOWHERE
TORCH_LAYERS = {  # kind → the torch module whose parameter slots the compiler declares
    "Linear": lambda c: nn.Linear(c["in_features"], c["out_features"], c["bias"]),
    "Embedding": lambda c: nn.Embedding(c["num_embeddings"], c["embedding_dim"]),
    "Conv2d": lambda c: nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel_size"]),
    "LayerNorm": lambda c: nn.LayerNorm(c["normalized_shape"]),
    "RMSNorm": lambda c: nn.RMSNorm(c["normalized_shape"]),
    "SelfAttention": lambda c: nn.MultiheadAttention(c["embed_dim"], c["num_heads"]),
    "Dropout": lambda c: nn.Dropout(),
}


def T(*shape, dtype="f32"):
    return TensorType(dtype, shape)


def L(path, kind, src=None, **config):
    return Layer(path, kind, frozen(config), S, frozen(src or {}))


def lin(path, i, o, bias=True, src=None):
    return L(path, "Linear", src, in_features=i, out_features=o, bias=bias)


def N(op, name, *inputs, **attrs):
    return Node(op, name, tuple(inputs), frozen(attrs), S)


def graph(name, inputs, layers, nodes, outputs, config=None, structural=()):
    with torch.device("meta"):  # shapes only: no memory, no draws from the global RNG
        slots = [(lay.path, TORCH_LAYERS[lay.kind](lay.config).named_parameters()) for lay in layers]
        params = tuple(ir.Param(f"{path}.{s}", path, s, tuple(w.shape), "f32", S) for path, ps in slots for s, w in ps)
    ins = tuple(ir.Input(n, t, S) for n, t in inputs)
    outs = tuple(ir.Output(v, v, S) for v in outputs)
    cfg = frozen(config or {})
    return Graph(name, cfg, cfg, ins, tuple(layers), params, tuple(nodes), outs, S, frozenset(structural))


def program(*graphs, shares=(), ties=(), types=None):
    def members(names):
        return tuple(ir.Member(n.lstrip("~"), n.startswith("~"), S) for n in names)
    return ir.ProgramIR(
        Source("test.tie", ""), frozen({g.name: g for g in graphs}),
        share_groups=tuple(ir.ShareGroup(i, members(m)) for i, m in shares),
        tie_groups=tuple(ir.TieGroup(i, lam, norm, members(m), S) for i, lam, norm, m in ties),
        types=frozen({k: frozen(v) for k, v in (types or {}).items()}),
    )


def unique_numel(m):
    return sum(p.numel() for p in m.parameters())


def mlp_ir():
    layers = [lin("fc1", 784, 256, src={"in_features": "784", "out_features": "hidden"}),
              lin("fc2", 256, 10, src={"in_features": "hidden"})]
    nodes = [N("Linear", "fc1", "x", layer="fc1"), N("relu", "h", "fc1"), N("Linear", "logits", "h", layer="fc2")]
    g = graph("MLP", [("x", T("B", 784))], layers, nodes, ["logits"], config={"hidden": 256})
    types = {"MLP": {"fc1": T("B", 256), "h": T("B", 256), "logits": T("B", 10)}}
    return program(g, types=types)


def ae_ir():
    nodes = [N("Linear", "z", "x", layer="enc"), N("relu", "h", "z"), N("Linear", "y", "h", layer="dec")]
    g = graph("AE", [("x", T("B", 6))], [lin("enc", 6, 3), lin("dec", 3, 6)], nodes, ["y"])
    types = {"AE": {"z": T("B", 3), "h": T("B", 3), "y": T("B", 6)}}
    return program(g, shares=[(1, ["AE.enc.weight", "~AE.dec.weight"])], types=types)


def lm_ir():
    layers = [L("embed", "Embedding", num_embeddings=11, embedding_dim=4),
              L("ln", "LayerNorm", normalized_shape=4, eps=1e-5),
              lin("lm_head", 4, 11, bias=False)]
    nodes = [N("Embedding", "e", "idx", layer="embed"), N("LayerNorm", "n", "e", layer="ln"),
             N("Linear", "logits", "n", layer="lm_head")]
    g = graph("TiedLM", [("idx", T("B", "T", dtype="i64"))], layers, nodes, ["logits"])
    return program(g, shares=[(2, ["TiedLM.embed.weight", "TiedLM.lm_head.weight"])])


def test_mlp_matches_hand_written_module():
    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(784, 256), nn.Linear(256, 10)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

    m, ref, x = build_module(mlp_ir(), "MLP", seed=3), Ref(), torch.randn(5, 784)
    ref.load_state_dict(m.state_dict(), strict=True)
    torch.testing.assert_close(m(x), ref(x))
    src = generate_source(mlp_ir(), "MLP")
    assert "self.fc1 = nn.Linear(784, hidden)" in src and "self.fc2 = nn.Linear(hidden, 10)" in src
    assert "def __init__(self, hidden=256):" in src and type(m).__name__ == "MLP"


AE_SOURCE = '''
class AE(nn.Module):
    """AE: 4 parameter slots using 3 tensors (27 weights)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 3)
        self.dec = nn.Linear(3, 6)

        self.dec.weight = None  # uses enc.weight.T (shared: group 1)

    def forward(self, x):
        """x: f32[B, 6] → y: f32[B, 6]"""
        z = self.enc(x)                                    # [B, 3]
        h = F.relu(z)                                      # [B, 3]
        y = F.linear(h, self.enc.weight.T, self.dec.bias)  # [B, 6]
        return y
'''


def test_emitted_source_reads_like_hand_written_code():
    src = generate_source(ae_ir(), "AE")
    assert src.startswith('"""Model AE, generated by tiec from test.tie.')
    assert '"""\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\nclass AE' in src  # only what it uses
    assert AE_SOURCE in src, src


def test_constructor_parameters_resize_layers_and_structural_ones_are_fixed():
    cls = type(build_module(mlp_ir(), "MLP"))
    assert cls(hidden=32).fc1.weight.shape == (32, 784)
    g = mlp_ir().models["MLP"]
    g2 = replace(g, config=frozen({"hidden": 256, "depth": 2}), defaults=frozen({"hidden": 256, "depth": 6}),
                 structural=frozenset({"depth"}))
    cls2 = type(build_module(program(g2), "MLP"))
    assert "depth=2" in generate_source(program(g2), "MLP")  # the compiled value, not the declared default
    with pytest.raises(ValueError, match="compiled with depth=2; recompile with --set depth=N"):
        cls2(depth=3)
    cls2(depth=2, hidden=8)
    g3 = replace(g, config=frozen({"hidden": 256, "scale": 0.5}), defaults=frozen({"hidden": 256, "scale": 0.5}))
    with pytest.raises(ValueError, match="compiled with scale=0.5"):  # no constructor reads it: baked into forward
        type(build_module(program(g3), "MLP"))(scale=2.0)


def test_tied_autoencoder_shares_one_tensor_transposed():
    m, x = build_module(ae_ir(), "AE"), torch.randn(4, 6)
    assert list(m.state_dict()) == ["enc.weight", "enc.bias", "dec.bias"]
    assert m.dec.weight is None and unique_numel(m) == 18 + 3 + 6
    W, b1, b2 = m.enc.weight, m.enc.bias, m.dec.bias
    torch.testing.assert_close(m(x), F.linear(F.relu(F.linear(x, W, b1)), W.T, b2))


def test_tied_lm_aliases_like_a_hand_written_tied_model():
    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.ln, self.lm_head = nn.Embedding(11, 4), nn.LayerNorm(4), nn.Linear(4, 11, bias=False)
            self.lm_head.weight = self.embed.weight

        def forward(self, idx):
            return self.lm_head(self.ln(self.embed(idx)))

    m, ref, idx = build_module(lm_ir(), "TiedLM"), Ref(), torch.randint(0, 11, (2, 5))
    assert set(m.state_dict()) == {"embed.weight", "ln.weight", "ln.bias", "lm_head.weight"}
    assert m.lm_head.weight is m.embed.weight and unique_numel(m) == 44 + 8
    ref.load_state_dict(m.state_dict(), strict=True)
    torch.testing.assert_close(m(idx), ref(idx))
    assert "self.lm_head.weight = self.embed.weight  # shared: group 2" in generate_source(lm_ir(), "TiedLM")


def test_repeat_copies_shares_and_nesting_give_hand_written_keys():
    layers = [L("tower.conv1", "Conv2d", in_channels=1, out_channels=2, kernel_size=3, stride=1, padding=1, bias=True),
              *(lin(f"blk.{i}.up", 4, 4, bias=False) for i in range(3)), lin("shared.up", 4, 4, bias=False),
              *(lin(f"fc.{i}", 4, 4) for i in range(2))]
    nodes = [N("Conv2d", "c", "img", layer="tower.conv1"), N("flatten", "f", "c", start_dim=1, end_dim=-1),
             N("Linear", "a0", "x", layer="blk.0.up"), N("Linear", "a1", "a0", layer="blk.1.up"),
             N("Linear", "a2", "a1", layer="blk.2.up"), N("Linear", "s", "a2", layer="shared.up"),
             N("Linear", "s2", "s", layer="shared.up"), N("Linear", "o", "s2", layer="fc.0"),
             N("Linear", "o2", "o", layer="fc.1")]
    prog = program(graph("Deep", [("img", T("B", 1, 4, 4)), ("x", T("B", 4))], layers, nodes, ["f", "o2"]),
                 shares=[(4, ["Deep.blk.0.up.weight", "Deep.blk.2.up.weight"])])
    m = build_module(prog, "Deep")
    assert list(m.state_dict()) == ["tower.conv1.weight", "tower.conv1.bias", "blk.0.up.weight", "blk.1.up.weight",
                                    "blk.2.up.weight", "shared.up.weight", "fc.0.weight", "fc.0.bias", "fc.1.weight",
                                    "fc.1.bias"]
    assert isinstance(m.blk, nn.ModuleList) and isinstance(m.fc, nn.ModuleList) and isinstance(m.fc[1], nn.Linear)
    assert m.blk[2].up.weight is m.blk[0].up.weight
    ref = nn.Module()
    ref.tower = nn.ModuleDict({"conv1": nn.Conv2d(1, 2, 3, padding=1)})
    ref.blk = nn.ModuleList([nn.ModuleDict({"up": nn.Linear(4, 4, bias=False)}) for _ in range(3)])
    ref.shared = nn.ModuleDict({"up": nn.Linear(4, 4, bias=False)})
    ref.fc = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
    ref.load_state_dict(m.state_dict(), strict=True)
    img, x = torch.randn(2, 1, 4, 4), torch.randn(2, 4)
    f, o2 = m(img, x)
    torch.testing.assert_close(f, ref.tower["conv1"](img).flatten(1))
    h = x
    for blk in ref.blk:
        h = blk["up"](h)
    torch.testing.assert_close(o2, ref.fc[1](ref.fc[0](ref.shared["up"](ref.shared["up"](h)))))
    assert "nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])" in generate_source(prog, "Deep")


def load_emitted(src, tmp_path, name):
    path = tmp_path / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"emitted_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("make, model, args", [
    (ae_ir, "AE", lambda: (torch.randn(3, 6),)),
    (lm_ir, "TiedLM", lambda: (torch.randint(0, 11, (2, 5)),)),
])
def test_emitted_file_equals_live_module(tmp_path, make, model, args):
    live = build_module(make(), model, seed=7)
    src = generate_source(make(), model)
    assert src == generate_source(make(), model)  # deterministic
    emitted = getattr(load_emitted(src, tmp_path, model), model)()
    emitted.load_state_dict(live.state_dict(), strict=True)
    x = args()
    torch.testing.assert_close(emitted(*x), live(*x))


@pytest.mark.parametrize("make, model, alias", [(ae_ir, "AE", None), (lm_ir, "TiedLM", ("embed", "lm_head"))])
def test_sharing_survives_deepcopy_to_and_save_load(make, model, alias):
    m, buf, fresh = build_module(make(), model), io.BytesIO(), build_module(make(), model, seed=99)
    torch.save(m.state_dict(), buf)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True), strict=True)
    for mod, dtype in [(copy.deepcopy(m), torch.float32), (m.to(torch.float64), torch.float64), (fresh, torch.float32)]:
        assert unique_numel(mod) == unique_numel(m) and all(p.dtype == dtype for p in mod.parameters())
        shared = (getattr(mod, alias[0]).weight, getattr(mod, alias[1]).weight) if alias else (mod.dec.weight, None)
        assert shared[0] is shared[1]
    for a, b in zip(fresh.parameters(), m.parameters()):
        torch.testing.assert_close(a, b.float())


def test_gradient_of_shared_parameter_is_sum_over_uses():
    m = build_module(ae_ir(), "AE").to(torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    (m(x) ** 2).sum().backward()
    W1 = m.enc.weight.detach().clone().requires_grad_()
    W2 = m.enc.weight.detach().T.clone().requires_grad_()  # the same values, as an independent second use
    (F.linear(F.relu(F.linear(x, W1, m.enc.bias.detach())), W2, m.dec.bias.detach()) ** 2).sum().backward()
    torch.testing.assert_close(m.enc.weight.grad, W1.grad + W2.grad.T)
    assert not torch.allclose(m.enc.weight.grad, W1.grad)  # both uses really contribute


def tie_ir(norm, k, lam, flip_last=False):
    layers = [lin(f"fc{i}", 3, 3, bias=False) for i in range(k)]
    g = graph("Tied", [("x", T("B", 3))], layers, [N("Linear", "y", "x", layer="fc0")], ["y"])
    names = [f"Tied.fc{i}.weight" for i in range(k)]
    if flip_last:
        names[-1] = "~" + names[-1]
    return program(g, ties=[(5, lam, norm, names)])


@pytest.mark.parametrize("norm, k, flip", [("l2", 2, 0), ("l2", 5, 0), ("l2", 5, 1), ("l1", 2, 0), ("l1", 4, 1)])
def test_tie_penalty_matches_pairwise_sum(norm, k, flip):
    m = build_module(tie_ir(norm, k, 0.25, flip), "Tied", seed=1)
    ws = [getattr(m, f"fc{i}").weight for i in range(k)]
    if flip:
        ws[-1] = ws[-1].T
    dist = (lambda a, b: ((a - b) ** 2).sum()) if norm == "l2" else (lambda a, b: (a - b).abs().sum())
    want = 0.25 * sum(dist(ws[i], ws[j]) for i in range(k) for j in range(i + 1, k))
    torch.testing.assert_close(m.tie_penalty(), want)
    assert m.tie_penalty().dim() == 0 and build_module(ae_ir(), "AE").tie_penalty().item() == 0.0


def cross_ir():
    a = graph("TaskA", [("x", T("B", 6))],
              [lin("fc1", 6, 3), lin("fc2", 3, 2)],
              [N("Linear", "h", "x", layer="fc1"), N("Linear", "y", "h", layer="fc2")], ["y"])
    b = graph("TaskB", [("x", T("B", 6))],
              [lin("fc1", 6, 3), lin("fc2", 3, 2), lin("dec", 3, 6, bias=False), lin("dec2", 2, 3, bias=False)],
              [N("Linear", "h", "x", layer="fc1"), N("Linear", "y", "h", layer="fc2"),
               N("Linear", "r", "h", layer="dec"), N("Linear", "r2", "y", layer="dec2")], ["y", "r", "r2"])
    return program(a, b, shares=[(1, ["TaskA.fc2.weight", "TaskB.fc2.weight", "~TaskB.dec2.weight"]),
                                 (2, ["TaskA.fc1.weight", "~TaskB.dec.weight"])],
                   ties=[(3, 0.5, "l2", ["TaskA.fc1.bias", "TaskB.fc1.bias"])])


def test_program_shares_across_models_plainly_and_transposed(tmp_path):
    p = build_module(cross_ir())
    keys = set(p.state_dict())
    assert "TaskB.fc2.weight" in keys and "TaskA.fc2.weight" in keys and "TaskB.dec.weight" not in keys
    assert p.TaskB.fc2.weight is p.TaskA.fc2.weight
    assert unique_numel(p) == (18 + 3 + 6 + 2) + (18 + 3 + 2) and p.TaskB.dec.weight is None
    x = torch.randn(4, 6)

    def reference(p):
        h = p.TaskB.fc1(x)
        y = F.linear(h, p.TaskA.fc2.weight, p.TaskB.fc2.bias)
        return y, h @ p.TaskA.fc1.weight, y @ p.TaskA.fc2.weight
    for q in (p, copy.deepcopy(p), copy.deepcopy(p).to(torch.float64)):
        x = x.to(q.TaskA.fc1.weight.dtype)
        torch.testing.assert_close(q.TaskB(x), reference(q))
        assert q.TaskB.fc2.weight is q.TaskA.fc2.weight and q.TaskB.dec2.weight is None
    c = copy.deepcopy(p)
    with torch.no_grad():
        c.TaskA.fc1.weight.add_(1.0)  # the copy's B must read the copy's A, not the original's
    x = x.float()
    assert not torch.allclose(c.TaskB(x)[1], p.TaskB(x)[1])
    fresh = build_module(cross_ir(), seed=5)
    fresh.load_state_dict(p.state_dict(), strict=True)
    torch.testing.assert_close(fresh.TaskB(x), p.TaskB(x))
    torch.testing.assert_close(p.tie_penalty(), 0.5 * ((p.TaskA.fc1.bias - p.TaskB.fc1.bias) ** 2).sum())
    src = generate_source(cross_ir())
    assert "self.TaskB.fc2.weight = self.TaskA.fc2.weight  # shared: group 1" in src
    emitted = load_emitted(src, tmp_path, "prog").Program()
    emitted.load_state_dict(p.state_dict(), strict=True)
    torch.testing.assert_close(emitted.TaskB(x), p.TaskB(x))
    alone = build_module(cross_ir(), "TaskB")  # alone, B keeps its own tensors; dec2 still reads its fc2
    assert list(alone.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "dec.weight"]
    torch.testing.assert_close(alone(x)[2], alone(x)[0] @ alone.fc2.weight)


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
    assert "def forward(self, input__):" in src and "input_ = torch_ * list_" in src


def test_live_module_is_deterministic_leaves_rng_alone_and_shows_source_in_tracebacks():
    prog, state = mlp_ir(), torch.random.get_rng_state()
    a, b, c = build_module(prog, "MLP", seed=0), build_module(prog, "MLP", seed=0), build_module(prog, "MLP", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.fc1.weight, b.fc1.weight) and not torch.equal(a.fc1.weight, c.fc1.weight)
    with pytest.raises(RuntimeError) as err:
        a(torch.randn(2, 5))
    frame = next(f for f in traceback.extract_tb(err.value.__traceback__) if f.filename == "<tiec:MLP>")
    assert frame.line == linecache.getline("<tiec:MLP>", frame.lineno).strip()
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
