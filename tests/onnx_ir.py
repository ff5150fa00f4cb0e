"""Hand-built IR and onnxruntime helpers for the ONNX backend's tests."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tiec.backends.onnx import export
from tiec.compiler import ir as tir
from tiec.dsl.diagnostics import NOWHERE, Source

S = NOWHERE


# ---------------------------------------------------------------------------- hand-built IR


def ty(spec: str) -> tir.TensorType:
    """`f32[B, 784]` → TensorType."""
    dtype, dims = spec.rstrip("]").split("[")
    return tir.TensorType(dtype, tuple(int(d) if d.strip().lstrip("-").isdigit() else d.strip()
                                   for d in dims.split(",") if d.strip()))


def n(op: str, name: str, *inputs: str, **attrs) -> tir.Node:
    return tir.Node(op, name, inputs, tir.frozen(attrs), S)


def layer(path: str, kind: str, **config) -> tir.Layer:
    return tir.Layer(path, kind, tir.frozen(config), S)


TORCH_LAYERS = {
    "Linear": lambda c: torch.nn.Linear(c["in_features"], c["out_features"], c.get("bias", True)),
    "Conv2d": lambda c: torch.nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel_size"]),
    "Embedding": lambda c: torch.nn.Embedding(c["num_embeddings"], c["embedding_dim"]),
    "LayerNorm": lambda c: torch.nn.LayerNorm(c["normalized_shape"]),
    "RMSNorm": lambda c: torch.nn.RMSNorm(c["normalized_shape"]),
    "SelfAttention": lambda c: torch.nn.MultiheadAttention(c["embed_dim"], c["num_heads"], bias=c.get("bias", True)),
    "Dropout": lambda c: torch.nn.Dropout(),
}


def slots(lay: tir.Layer) -> list[tuple[str, tuple[int, ...]]]:
    """The parameter slots torch gives a layer of this kind and config."""
    return [(k, tuple(v.shape)) for k, v in TORCH_LAYERS[lay.kind](lay.config).state_dict().items()]


def graph(name: str, inputs: dict, layers: list, nodes: list, outputs: list) -> tir.Graph:
    params = tuple(tir.Param(f"{lay.path}.{s}", lay.path, s, shape, "f32", S) for lay in layers for s, shape in slots(lay))
    outs = tuple(tir.Output(o, o, S) if isinstance(o, str) else tir.Output(o[0], o[1], S) for o in outputs)
    ins = tuple(tir.Input(k, ty(v), S) for k, v in inputs.items())
    return tir.Graph(name, tir.frozen(), tir.frozen(), ins, tuple(layers), params, tuple(nodes), outs, S)


def program(g: tir.Graph, types: dict, shares=(), ties=(), others=()) -> tir.ProgramIR:
    """One model `g` (plus `others`), `types` in spec strings (inputs are added)."""
    tt = {**{i.name: i.type for i in g.inputs}, **{k: ty(v) for k, v in types.items()}}
    models = {g.name: g, **{o.name: o for o in others}}
    return tir.ProgramIR(Source("<test>", ""), tir.frozen(models), share_groups=tuple(shares), tie_groups=tuple(ties),
                     types=tir.frozen({g.name: tir.frozen(tt)}))


def share(gid: int, *members: tuple[str, bool]) -> tir.ShareGroup:
    return tir.ShareGroup(gid, tuple(tir.Member(p, t, S) for p, t in members))


def random_weights(ir: tir.ProgramIR, model: str = "M", seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    binds = tir.bindings(ir, model)
    return {p.name: (rng.standard_normal(p.shape) * 0.3).astype(np.float32)
            for p in ir.models[model].params if binds[p.name].canonical == p.name}


def slot(ir: tir.ProgramIR, weights: dict, name: str, model: str = "M") -> torch.Tensor:
    """The tensor a declared slot holds (its group's tensor, transposed where the binding says)."""
    b = tir.bindings(ir, model)[name]
    w = torch.from_numpy(weights[b.canonical])
    return w.T if b.transposed else w


def exported(tmp_path, ir: tir.ProgramIR, weights: dict, model: str = "M", name: str = "m.onnx"):
    path = str(tmp_path / name)
    info = export(ir, model, path, weights)
    onnx.checker.check_model(path, full_check=True)
    return path, onnx.load(path), info


def run(path: str, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})


def close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected.detach().numpy(), rtol=1e-3, atol=1e-5)


def floats(rng, *shape) -> np.ndarray:
    return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def op_types(proto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def init_names(proto) -> list[str]:
    return [t.name for t in proto.graph.initializer if not t.name.startswith("~")]


# ---------------------------------------------------------------------------- models


def mlp() -> tir.ProgramIR:
    g = graph("M", {"x": "f32[B, 20]"}, [layer("fc1", "Linear", in_features=20, out_features=16, bias=True),
                                         layer("fc2", "Linear", in_features=16, out_features=5, bias=True)],
              [n("Linear", "h", "x", layer="fc1"), n("relu", "a", "h"), n("Linear", "logits", "a", layer="fc2"),
               n("log_softmax", "y", "logits", dim=-1)], ["y"])
    return program(g, {"h": "f32[B, 16]", "a": "f32[B, 16]", "logits": "f32[B, 5]", "y": "f32[B, 5]"})


def attention_stack(causal: bool, bias: bool, depth: int = 1, d: int = 16, heads: int = 4) -> tir.ProgramIR:
    layers, nodes, types, h = [], [], {}, "x"
    for i in range(depth):
        layers.append(layer(f"attn{i}", "SelfAttention", embed_dim=d, num_heads=heads, causal=causal, bias=bias))
        nodes += [n("SelfAttention", f"a{i}", h, layer=f"attn{i}"), n("add", f"h{i}", h, f"a{i}")]
        types.update({f"a{i}": f"f32[B, T, {d}]", f"h{i}": f"f32[B, T, {d}]"})
        h = f"h{i}"
    return program(graph("M", {"x": f"f32[B, T, {d}]"}, layers, nodes, [("y", h)]), types)
