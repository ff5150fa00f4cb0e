"""Hand-built IR for the PyTorch backend's tests: no parser, no passes.

Parameter slots come from the real torch modules (built on the meta device), so the IR declares
exactly what PyTorch would hold.
"""
from __future__ import annotations

import torch
from tiec.compiler import ir
from tiec.compiler.ir import Graph, Layer, Node, TensorType, frozen
from tiec.dsl.diagnostics import NOWHERE, Source
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


