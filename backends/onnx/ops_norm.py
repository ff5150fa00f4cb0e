"""ONNX lowerings of BatchNorm1d and BatchNorm2d (`NORM_EMIT`), merged into `ops.ONNX_EMIT`.

An ONNX file is an inference graph, so BatchNorm exports as PyTorch's eval mode: normalized by
the running statistics, which are initializers named by their state-dict keys (`bn.running_mean`)
and filled from the user's weights like the parameters. A layer without `track_running_stats`
has none and normalizes by the batch's own statistics in eval mode too, as PyTorch does."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from tiec.backends.onnx.builder import GraphBuilder
from tiec.compiler.ir import Node

Rule = Callable[[GraphBuilder, Node], "str | None"]


def _affine(b: GraphBuilder, layer: str, n: int, dtype: str) -> tuple[str, str]:
    """The layer's weight and bias, or 1 and 0 per channel without `affine` (BatchNormalization
    takes both)."""
    if b.param(f"{layer}.weight") is not None:
        return b.weight(f"{layer}.weight"), b.weight(f"{layer}.bias")
    return b.constant(np.ones(n), dtype), b.constant(np.zeros(n), dtype)


def _batch_norm(b: GraphBuilder, node: Node) -> str:
    layer, x = node.attrs["layer"], node.inputs[0]
    cfg = b.graph.layer(layer).config
    n, dtype, rank = int(cfg["num_features"]), b.dtype(x) or "f32", len(b.shape(x))
    xv = b.value(x)
    scale, bias = _affine(b, layer, n, dtype)
    if cfg["track_running_stats"]:
        return b.node("BatchNormalization", [xv, scale, bias, f"{layer}.running_mean", f"{layer}.running_var"],
                      epsilon=float(cfg["eps"]))
    axes = b.ints([0, *range(2, rank)])  # every dim but the channels'
    centred = b.node("Sub", [xv, b.node("ReduceMean", [xv, axes], keepdims=1)])
    var = b.node("ReduceMean", [b.node("Mul", [centred, centred]), axes], keepdims=1)  # biased, as torch
    y = b.node("Div", [centred, b.node("Sqrt", [b.node("Add", [var, b.scalar(cfg["eps"], dtype)])])])
    per_channel = b.ints([0, *range(2, rank)]) if rank > 2 else None  # [C] → [1, C, 1, …]
    if per_channel is not None:
        scale, bias = (b.node("Unsqueeze", [t, per_channel]) for t in (scale, bias))
    return b.node("Add", [b.node("Mul", [y, scale]), bias])


NORM_EMIT: Mapping[str, Rule] = {
    "BatchNorm1d": _batch_norm,  # (x - running_mean) / √(running_var + eps) · w + b per channel (eval mode)
    "BatchNorm2d": _batch_norm,  # the same over [N, C, H, W]
}
