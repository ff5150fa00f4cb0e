"""ONNX lowering of `sdpa` (scaled dot-product attention) to opset-18 primitives (`ATTENTION_EMIT`).

Merged into `ops.ONNX_EMIT`. softmax(q kᵀ · scale + mask) v with every length dynamic: grouped key
and value heads are repeated to the query heads (Unsqueeze → Expand → Reshape, as PyTorch's
`enable_gqa` does), a bool mask or the causal rule puts -inf where a query may not attend, a float
mask is added. `scale` defaults to 1/√E, E being q's last dim.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from tiec.backends.onnx.builder import GraphBuilder
from tiec.compiler.ir import Node

Rule = Callable[[GraphBuilder, Node], "str | None"]


def _repeat_heads(b: GraphBuilder, x: str, groups: int, rank: int) -> str:
    """[..., Hk, S, E] → [..., Hk·groups, S, E], each head repeated `groups` times in place."""
    if groups == 1:
        return x
    wide = b.node("Unsqueeze", [x, b.ints([rank - 2])])  # [..., Hk, 1, S, E]
    wide = b.node("Expand", [wide, b.ints([1] * (rank - 2) + [groups, 1, 1])])  # [..., Hk, g, S, E]
    shape = b.node("Concat", [b.node("Shape", [x], end=rank - 3), b.ints([-1]), b.node("Shape", [x], start=-2)],
                   axis=0)  # the leading dims, Hk·g, then S and E
    return b.node("Reshape", [wide, shape])


def _length(b: GraphBuilder, x: str) -> str:
    """x.shape[-2] (a query or key length) as an i64 scalar."""
    return b.node("Squeeze", [b.node("Shape", [x], start=-2, end=-1), b.ints([0])])


def _causal(b: GraphBuilder, q: str, k: str) -> str:
    """[L, S] bool, true where key j lies after query i (j > i): the places causal attention drops."""
    zero, one = b.scalar(0, "i64"), b.scalar(1, "i64")
    rows = b.node("Range", [zero, _length(b, q), one])
    cols = b.node("Range", [zero, _length(b, k), one])
    return b.node("Greater", [cols, b.node("Unsqueeze", [rows, b.ints([1])])])


def _sdpa(b: GraphBuilder, node: Node) -> str:
    qn, kn, vn = node.inputs[:3]
    q, k, v = b.value(qn), b.value(kn), b.value(vn)
    qs, ks = b.shape(qn), b.shape(kn)
    dtype = b.dtype(qn) or "f32"
    rank = len(qs)
    if rank >= 3 and qs[-3] != ks[-3]:
        if not (isinstance(qs[-3], int) and isinstance(ks[-3], int)):
            raise b.fail(node, "grouped-query attention needs fixed head counts")
        groups = qs[-3] // ks[-3]
        k, v = _repeat_heads(b, k, groups, rank), _repeat_heads(b, v, groups, rank)
    scale = node.attrs["scale"]
    if scale is None:
        if not isinstance(qs[-1], int):
            raise b.fail(node, "the default scale needs q's last dim fixed", "pass scale=…")
        scale = 1 / math.sqrt(qs[-1])
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = b.node("Mul", [b.node("MatMul", [q, b.node("Transpose", [k], perm=perm)]), b.scalar(scale, dtype)])
    if node.attrs["causal"]:
        scores = b.node("Where", [_causal(b, q, k), b.scalar(-math.inf, dtype), scores])
    elif len(node.inputs) == 4:
        mask = node.inputs[3]
        if b.dtype(mask) == "bool":  # true: may attend
            scores = b.node("Where", [b.value(mask), scores, b.scalar(-math.inf, dtype)])
        else:
            scores = b.node("Add", [scores, b.value(mask)])
    return b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])


ATTENTION_EMIT: Mapping[str, Rule] = {
    "sdpa": _sdpa,  # softmax(q kᵀ · scale [+ mask]) v, key/value heads repeated for grouped queries
}
