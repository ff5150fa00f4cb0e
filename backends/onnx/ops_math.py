"""ONNX lowerings of the elementwise math, comparison, selection and cast ops (`MATH_EMIT`).

Merged into `ops.ONNX_EMIT`. Operands are computed in the dtype the compiler gave them
(compiler/shapes_math.py): a literal becomes a scalar of that dtype, and an integer tensor beside
a float literal is cast to f32 first, as PyTorch promotes it. Each row's comment is its formula.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from tiec.backends.onnx.builder import ONNX_DTYPES, GraphBuilder
from tiec.compiler.ir import Node

Rule = Callable[[GraphBuilder, Node], "str | None"]
_FLOATS = ("f32", "f16", "bf16", "f64")
_COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge")


def _operand_dtype(b: GraphBuilder, node: Node, names: tuple[str, ...]) -> str:
    """The dtype the operands are computed in: the result's, but for a comparison (bool) the
    operands' common one."""
    if node.op not in _COMPARISONS and b.dtype(node.name) is not None:
        return b.dtype(node.name)
    tensors = [b.dtype(n) for n in names if not b.is_literal(n)]
    dtype = next((t for t in tensors if t is not None), "f32")
    floats_lit = any((b.dtype(n) or "f32") in _FLOATS for n in names if b.is_literal(n))
    return "f32" if floats_lit and dtype not in _FLOATS else dtype


def _operands(b: GraphBuilder, names: tuple[str, ...], dtype: str) -> list[str]:
    """The ONNX values of `names` in `dtype`: literals as scalars of it, tensors cast to it."""
    out = []
    for n in names:
        v = b.value(n, dtype)
        if not b.is_literal(n) and b.dtype(n) not in (None, dtype):
            v = b.node("Cast", [v], to=ONNX_DTYPES[dtype])
        out.append(v)
    return out


def _elementwise(op_type: str, first: int = 0) -> Rule:
    """`op_type` over the node's inputs from `first` on, in their common dtype (earlier inputs,
    such as a condition, pass as they are)."""
    def rule(b: GraphBuilder, node: Node) -> str:
        head = [b.value(n) for n in node.inputs[:first]]
        rest = node.inputs[first:]
        return b.node(op_type, head + _operands(b, rest, _operand_dtype(b, node, rest)))

    return rule


def _unary(op_type: str) -> Rule:
    return lambda b, node: b.node(op_type, [b.value(node.inputs[0])])


def _unary_via_f32(op_type: str) -> Rule:
    """An ONNX op without a bf16 form: bf16 computes in f32, rounded once."""
    return lambda b, node: b.node_via_f32(b.dtype(node.inputs[0]), op_type, [b.value(node.inputs[0])])


def _rsqrt(b: GraphBuilder, node: Node) -> str:
    return b.node("Reciprocal", [b.node("Sqrt", [b.value(node.inputs[0])])])


def _bound(b: GraphBuilder, value: float | None, dtype: str) -> str | None:
    if value is None:
        return None
    return b.scalar(int(value) if dtype not in _FLOATS else value, dtype)


def _clamp(b: GraphBuilder, node: Node) -> str:
    x = node.inputs[0]
    dtype = b.dtype(x) or "f32"
    low, high = _bound(b, node.attrs["min"], dtype), _bound(b, node.attrs["max"], dtype)
    return b.node("Clip", [b.value(x), low or "", high])


def _ne(b: GraphBuilder, node: Node) -> str:
    return b.node("Not", [_elementwise("Equal")(b, node)])


def _masked_fill(b: GraphBuilder, node: Node) -> str:
    x, mask = node.inputs
    dtype = b.dtype(x) or "f32"
    value = node.attrs["value"]
    fill = b.scalar(int(value) if dtype not in _FLOATS else value, dtype)
    return b.node("Where", [b.value(mask), fill, b.value(x)])


def _logical_not(b: GraphBuilder, node: Node) -> str:
    x = node.inputs[0]
    return b.node("Not", _operands(b, (x,), "bool"))


def _cast(b: GraphBuilder, node: Node) -> str:
    return b.node("Cast", [b.value(node.inputs[0])], to=ONNX_DTYPES[node.attrs["dtype"]])


MATH_EMIT: Mapping[str, Rule] = {
    "exp": _unary("Exp"),  # eˣ
    "log": _unary("Log"),  # ln x
    "sqrt": _unary("Sqrt"),  # √x
    "rsqrt": _rsqrt,  # 1 / √x
    "sin": _unary_via_f32("Sin"),  # sin x
    "cos": _unary_via_f32("Cos"),  # cos x
    "erf": _unary("Erf"),  # (2/√π) ∫₀ˣ e^(−t²) dt
    "abs": _unary("Abs"),  # |x|
    "pow": _elementwise("Pow"),  # xᵉ
    "minimum": _elementwise("Min"),  # min(a, b)
    "maximum": _elementwise("Max"),  # max(a, b)
    "clamp": _clamp,  # Clip(x, lo, hi)
    "eq": _elementwise("Equal"),  # a == b
    "ne": _ne,  # not (a == b)
    "lt": _elementwise("Less"),  # a < b
    "le": _elementwise("LessOrEqual"),  # a <= b
    "gt": _elementwise("Greater"),  # a > b
    "ge": _elementwise("GreaterOrEqual"),  # a >= b
    "logical_and": _elementwise("And"),  # a ∧ b
    "logical_or": _elementwise("Or"),  # a ∨ b
    "logical_not": _logical_not,  # ¬a
    "where": _elementwise("Where", first=1),  # condition ? a : b
    "masked_fill": _masked_fill,  # Where(mask, value, x)
    "cast": _cast,  # Cast(x, to)
    "cast_like": lambda b, node: b.node("CastLike", [b.value(v) for v in node.inputs]),  # Cast(x, to=other's type)
}
