"""ONNX lowerings of Conv1D, GroupNorm, ConvTranspose2d, adaptive_avg_pool2d and RotaryEmbedding
(`LAYER_EMIT`), merged into `ops.ONNX_EMIT`. Each row's comment is its formula."""
from __future__ import annotations

from collections.abc import Callable, Mapping

from tiec.backends.onnx.builder import ONNX_DTYPES, GraphBuilder
from tiec.compiler.ir import Node

Rule = Callable[[GraphBuilder, Node], "str | None"]


def _slot(b: GraphBuilder, layer: str, slot: str) -> str | None:
    name = f"{layer}.{slot}"
    return b.weight(name) if b.param(name) is not None else None


def _conv1d(b: GraphBuilder, node: Node) -> str:
    layer = node.attrs["layer"]
    y = b.node("MatMul", [b.value(node.inputs[0]), b.weight(f"{layer}.weight")])  # W stored [in, out]: as read
    return b.node("Add", [y, b.weight(f"{layer}.bias")])


def _group_norm(b: GraphBuilder, node: Node) -> str:
    layer, x = node.attrs["layer"], node.inputs[0]
    cfg = b.graph.layer(layer).config
    rank, dtype = len(b.shape(x)), b.dtype(x) or "f32"
    xv = b.value(x)
    grouped = b.node("Reshape", [xv, b.ints([0, int(cfg["num_groups"]), -1])])  # [N, G, C/G · spatial]
    axis = b.ints([2])
    centred = b.node("Sub", [grouped, b.node("ReduceMean", [grouped, axis], keepdims=1)])
    var = b.node("ReduceMean", [b.node("Mul", [centred, centred]), axis], keepdims=1)
    normed = b.node("Div", [centred, b.node("Sqrt", [b.node("Add", [var, b.scalar(cfg["eps"], dtype)])])])
    y = b.node("Reshape", [normed, b.node("Shape", [xv])])
    if cfg["affine"]:
        per_channel = b.ints(list(range(1, rank - 1)))  # [C] → [C, 1, …]: broadcast over the spatial dims
        y = b.node("Mul", [y, b.node("Unsqueeze", [b.weight(f"{layer}.weight"), per_channel])])
        y = b.node("Add", [y, b.node("Unsqueeze", [b.weight(f"{layer}.bias"), per_channel])])
    return y


def _conv_transpose2d(b: GraphBuilder, node: Node) -> str:
    layer = node.attrs["layer"]
    cfg = b.graph.layer(layer).config
    ph, pw = cfg["padding"]
    args = [b.value(node.inputs[0]), b.weight(f"{layer}.weight"), _slot(b, layer, "bias")]
    return b.node_via_f32(b.dtype(node.inputs[0]), "ConvTranspose", args, kernel_shape=list(cfg["kernel_size"]), strides=list(cfg["stride"]),
                  pads=[ph, pw, ph, pw], output_padding=list(cfg["output_padding"]))


def _adaptive_avg_pool2d(b: GraphBuilder, node: Node) -> str:
    x = node.inputs[0]
    h, w = node.attrs["output_size"]
    if (h, w) == (1, 1):
        return b.node_via_f32(b.dtype(x), "GlobalAveragePool", [b.value(x)])
    kernel = [int(b.shape(x)[2]) // h, int(b.shape(x)[3]) // w]  # the checker made h, w divide H, W
    return b.node_via_f32(b.dtype(x), "AveragePool", [b.value(x)], kernel_shape=kernel, strides=kernel)


def _rotary_embedding(b: GraphBuilder, node: Node) -> str:
    """cos or sin (`index` 0 or 1) of [t · inv_freq, t · inv_freq] for t = 0 … T−1 (T: dim −2 of the
    input, dynamic), in f32, then cast to the input's dtype. `inv_freq` is the initializer the
    export computes (`buffers.computed_buffer`); both values share one angle table per layer and T."""
    from tiec.backends.onnx.ops import arange  # `ops` merges this table as it is imported

    layer, x = node.attrs["layer"], node.inputs[0]

    def angles() -> str:
        t = b.node("Cast", [arange(b, x, -2)], to=ONNX_DTYPES["f32"])
        freqs = b.node("Mul", [b.node("Unsqueeze", [t, b.ints([1])]), f"{layer}.inv_freq"])  # [T, head_dim / 2]
        return b.node("Concat", [freqs, freqs], axis=-1)

    y = b.node("Cos" if node.attrs["index"] == 0 else "Sin", [b.cached(("rotary", layer) + b.dim_key(x, -2), angles)])
    dtype = b.dtype(x) or "f32"
    return y if dtype == "f32" else b.node("Cast", [y], to=ONNX_DTYPES[dtype])


LAYER_EMIT: Mapping[str, Rule] = {
    "Conv1D": _conv1d,  # x W + b, W stored [in, out]
    "GroupNorm": _group_norm,  # per group of channels: (x - μ) / √(σ² + eps); then · w + b per channel
    "ConvTranspose2d": _conv_transpose2d,  # ConvTranspose(x, W, b) with torch's pads and output_padding
    "adaptive_avg_pool2d": _adaptive_avg_pool2d,  # GlobalAveragePool for 1×1, else AveragePool(H/h, W/w)
    "RotaryEmbedding": _rotary_embedding,  # cos / sin of concat(t ⊗ inv_freq, t ⊗ inv_freq), t = 0 … T−1
}
