"""Shape and dtype rules of the elementwise math, comparison, selection and cast ops.

They extend `shapes.SHAPE_RULES` and `shapes.DTYPE_RULES` (merged there; the same `Ctx`, the same
broadcasting). Dtypes follow PyTorch: a literal operand takes the tensor's dtype, except that a
float literal beside an integer tensor computes in f32 (`i < 0.5` compares in f32, never against a
truncated 0); two tensors of different dtypes are an error, as in the arithmetic ops; a comparison
gives `bool`. Which dtypes each op takes is measured against both backends by
tests/test_dtype_rules.py.
"""
from __future__ import annotations

from collections.abc import Callable

from . import ir
from .shapes import FLOATS, INTEGERS, Ctx, _f32_in_onnxruntime, _floats, _takes, broadcast, check_fits, promote, same

T = ir.TensorType
NUMBERS = FLOATS + INTEGERS

UNARY_FLOAT_OPS = ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "erf")
COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge")


def operand_dtype(ctx: Ctx, names: list[str], types: list[T]) -> str:
    """The dtype an op computes its operands in: the tensors' one dtype, or f32 where a float
    literal meets an integer tensor. Raises on two tensors of different dtypes."""
    tensors = [t for n, t in zip(names, types) if n not in ctx.consts]
    if not tensors and ctx.node.op == "where":  # where(m, -1e9, 0.0): the numbers' own dtype
        return "f32" if any(t.dtype in FLOATS for t in types) else "i64"
    if not tensors:
        ctx.fail(f"{ctx.node.op} needs at least one tensor operand", hint="a literal alone is a number, not a tensor")
    dtype = tensors[0].dtype
    for t in tensors[1:]:  # as PyTorch promotes: f16 with f32 is f32, an integer with a float the float
        if "bool" in (dtype, t.dtype) and dtype != t.dtype:
            ctx.fail(f"{ctx.node.op}: dtypes differ ({dtype} and {t.dtype})", hint="cast one: cast(x, \"f32\")")
        dtype = promote(T(dtype, (1,)), T(t.dtype, (1,)))
    floats_lit = any(t.dtype in FLOATS for n, t in zip(names, types) if n in ctx.consts)
    dtype = "f32" if floats_lit and dtype not in FLOATS else dtype
    for n in names:
        if n in ctx.consts:
            check_fits(ctx, ctx.consts[n], dtype)
    return dtype


def _shape_of(ctx: Ctx, types: list[T]) -> tuple:
    shape: tuple = ()
    for t in types:
        shape = broadcast(ctx, shape, t.shape)
    return shape


def broadcasts_to(small: tuple, big: tuple) -> bool:
    """Whether a tensor of shape `small` broadcasts to `big` without growing it."""
    return len(small) <= len(big) and all(
        d == 1 or same(d, e) for d, e in zip(reversed(small), reversed(big)))


def _same_as_input(ctx: Ctx) -> T:
    return ctx.ins[0]


def _pow(ctx: Ctx) -> T:
    x, e = ctx.ins
    dtype = operand_dtype(ctx, list(ctx.node.inputs), [x, e])
    exponent = ctx.consts.get(ctx.node.inputs[1])
    if dtype in INTEGERS and exponent is not None and exponent < 0:  # torch raises at run time
        ctx.fail(f"pow of an {dtype} tensor to the negative power {exponent:g}: PyTorch refuses integers to "
                 "negative integer powers", hint='cast it first: pow(cast(x, "f32"), -1)')
    return T(dtype, _shape_of(ctx, [x, e]))


def _binary_same(ctx: Ctx) -> T:
    dtype = operand_dtype(ctx, list(ctx.node.inputs), ctx.ins)
    return T(dtype, _shape_of(ctx, ctx.ins))


def _clamp(ctx: Ctx) -> T:
    x, low, high = ctx.ins[0], ctx.node.attrs["min"], ctx.node.attrs["max"]
    if low is None and high is None:
        ctx.fail("clamp needs min, max or both", hint="clamp(x, min=0.0)")
    if low is not None and high is not None and low > high:
        ctx.fail(f"clamp: min {low:g} is above max {high:g}")
    if x.dtype in INTEGERS and any(v is not None and v != int(v) for v in (low, high)):
        ctx.fail(f"clamp of an {x.dtype} tensor takes whole-number bounds", hint="cast it first: cast(x, \"f32\")")
    for name, v in (("min", low), ("max", high)):
        check_fits(ctx, v, x.dtype, f"clamp's {name}")
    return x


def _compare(ctx: Ctx) -> T:
    operand_dtype(ctx, list(ctx.node.inputs), ctx.ins)
    return T("bool", _shape_of(ctx, ctx.ins))


def _logical(ctx: Ctx) -> T:
    return T("bool", _shape_of(ctx, ctx.ins))


def _where(ctx: Ctx) -> T:
    cond, a, b = ctx.ins
    dtype = operand_dtype(ctx, list(ctx.node.inputs[1:]), [a, b])
    return T(dtype, _shape_of(ctx, [cond, a, b]))


def _masked_fill(ctx: Ctx) -> T:
    x, mask = ctx.ins
    if not broadcasts_to(mask.shape, x.shape):
        ctx.fail(f"masked_fill: the mask {mask} must broadcast to the input's shape {x}")
    value = ctx.node.attrs["value"]
    if x.dtype in INTEGERS and value != int(value):
        ctx.fail(f"masked_fill of an {x.dtype} tensor takes a whole-number value", hint="cast it first: cast(x, \"f32\")")
    check_fits(ctx, value, x.dtype, "masked_fill's value")
    return x


def _cast(ctx: Ctx) -> T:
    return T(ctx.node.attrs["dtype"], ctx.ins[0].shape)


def _cast_like(ctx: Ctx) -> T:
    return T(ctx.ins[1].dtype, ctx.ins[0].shape)


MATH_SHAPES: dict[str, Callable[[Ctx], T]] = {
    **{op: _same_as_input for op in UNARY_FLOAT_OPS},  # elementwise, shape and dtype kept
    "abs": _same_as_input,
    "pow": _pow,                                      # x ** e, broadcast
    "minimum": _binary_same, "maximum": _binary_same,  # elementwise, broadcast
    "clamp": _clamp,                                  # min(max(x, lo), hi)
    **{op: _compare for op in COMPARISONS},           # broadcast → bool
    "logical_and": _logical, "logical_or": _logical, "logical_not": _logical,
    "where": _where,                                  # broadcast of condition, a, b
    "masked_fill": _masked_fill,                      # x's shape: the mask broadcasts to it
    "cast": _cast,                                    # x's shape in the named dtype
    "cast_like": _cast_like,                          # x's shape in other's dtype
}


def _condition(ctx: Ctx) -> None:
    if ctx.ins[0].dtype != "bool":
        ctx.fail(f"where: the condition must be bool, got {ctx.ins[0].dtype}", hint="compare first: gt(m, 0)")
    if operand_dtype(ctx, list(ctx.node.inputs[1:]), ctx.ins[1:]) == "bool":
        ctx.fail("where selects between numbers: onnxruntime has no bool kernel for Where",
                 hint="logical_or(logical_and(c, a), logical_and(logical_not(c), b)) selects between bools")


def _masked_fill_dtypes(ctx: Ctx) -> None:
    if ctx.ins[1].dtype != "bool":
        ctx.fail(f"masked_fill: the mask must be bool, got {ctx.ins[1].dtype}", hint="compare first: eq(m, 0)")
    if ctx.ins[0].dtype == "bool":
        ctx.fail("masked_fill needs a numeric tensor, got bool", hint="use where(mask, a, b) to select between bools")


_numbers = _takes(NUMBERS, "numbers", hint="bool tensors take no arithmetic")

MATH_DTYPES: dict[str, Callable[[Ctx], None]] = {
    "exp": _floats, "log": _floats, "sqrt": _floats, "rsqrt": _floats, "sin": _floats, "cos": _floats,
    "erf": _f32_in_onnxruntime("Erf"),
    "abs": _numbers, "pow": _numbers, "minimum": _numbers, "maximum": _numbers, "clamp": _numbers,
    **{op: _numbers for op in COMPARISONS if op not in ("eq", "ne")},
    "eq": _takes(NUMBERS + ("bool",), "a tensor"), "ne": _takes(NUMBERS + ("bool",), "a tensor"),
    "where": _condition, "masked_fill": _masked_fill_dtypes,
}  # cast and the logical ops take any dtype (nonzero is true, as in PyTorch)
