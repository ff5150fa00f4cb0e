"""ONNX lowerings of the slicing and indexing ops (`INDEX_EMIT`), merged into `ops.ONNX_EMIT`.

Each is one opset-18 node: `Slice` (a chunk or split piece is the slice its index names),
`Gather` (with a scalar index it drops the dim, as `select` does), `GatherElements`,
`Unsqueeze`/`Squeeze`. Each row's comment is its formula.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from tiec.backends.onnx.builder import GraphBuilder
from tiec.compiler.ir import Node

Rule = Callable[[GraphBuilder, Node], "str | None"]
_TO_END = 2**63 - 1  # Slice's "to the end": the largest int64


def _slice_node(b: GraphBuilder, node: Node, start: int, end: int | None, step: int = 1) -> str:
    axes, ends = b.ints([node.attrs["dim"]]), b.ints([_TO_END if end is None else end])
    return b.node("Slice", [b.value(node.inputs[0]), b.ints([start]), ends, axes, b.ints([step])])


def _slice(b: GraphBuilder, node: Node) -> str:
    a = node.attrs
    return _slice_node(b, node, a["start"], a["end"], a["step"])


def _fixed_size(b: GraphBuilder, node: Node) -> int:
    return int(b.shape(node.inputs[0])[node.attrs["dim"]])


def _chunk(b: GraphBuilder, node: Node) -> str:
    piece = _fixed_size(b, node) // node.attrs["chunks"]
    i = node.attrs["index"]
    return _slice_node(b, node, i * piece, (i + 1) * piece)


def _split(b: GraphBuilder, node: Node) -> str:
    sizes, i = node.attrs["sizes"], node.attrs["index"]
    start = sum(sizes[:i])
    return _slice_node(b, node, start, start + sizes[i])


def _select(b: GraphBuilder, node: Node) -> str:
    index = b.scalar(node.attrs["index"], "i64")
    return b.node("Gather", [b.value(node.inputs[0]), index], axis=node.attrs["dim"])


def _by_axis(op_type: str) -> Rule:
    return lambda b, node: b.node(op_type, [b.value(node.inputs[0]), b.ints([node.attrs["dim"]])])


def _indexed(op_type: str) -> Rule:
    return lambda b, node: b.node(op_type, [b.value(v) for v in node.inputs], axis=node.attrs["dim"])


INDEX_EMIT: Mapping[str, Rule] = {
    "slice": _slice,  # x[..., start:end:step] along dim
    "select": _select,  # x[..., i] along dim: Gather with a scalar index
    "unsqueeze": _by_axis("Unsqueeze"),  # a dim of 1 inserted at dim
    "squeeze": _by_axis("Squeeze"),  # the dim of 1 at dim removed
    "gather": _indexed("GatherElements"),  # out[i][j] = x[index[i][j]][j] (dim 0), as torch.gather
    "index_select": _indexed("Gather"),  # whole slices of x along dim, picked by a 1-D index
    "chunk": _chunk,  # piece `index` of `chunks` equal ones along dim
    "split": _split,  # piece `index` of the given sizes along dim
}
