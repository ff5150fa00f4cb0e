"""Shape and dtype rules of slicing, indexing and reshaping-by-one ops (merged into `shapes`).

PyTorch's semantics: `slice` is `x[..., start:end:step]` along one dim (Python's clamping),
`select` is `x[..., i]` (the dim goes), `unsqueeze`/`squeeze` add or drop a dim of size 1,
`gather` is `torch.gather` (the output takes the index's shape), `index_select` picks whole
slices by a 1-D index, and `chunk`/`split` give one piece each (`q, k, v = chunk(qkv, 3, dim=-1)`
makes three nodes). A length the slice makes of a symbolic dim stays symbolic.
"""
from __future__ import annotations

from . import ir
from .shapes import INTEGERS, Ctx, _fmt

T = ir.TensorType


def _axis(ctx: Ctx, rank: int, extra: int = 0) -> int:
    return ctx.axis(ctx.node.attrs["dim"], rank + extra)


def _slice(ctx: Ctx) -> T:
    x = ctx.ins[0]
    d = _axis(ctx, len(x.shape))
    start, end, step = ctx.node.attrs["start"], ctx.node.attrs["end"], ctx.node.attrs["step"]
    if step < 1:
        ctx.fail(f"slice: step must be at least 1, got {step}", hint="a negative step has no PyTorch form: flip first")
    size = x.shape[d]
    if isinstance(size, int):
        n = len(range(size)[slice(start, end, step)])
        if n == 0:  # Python's clamping would give a 0-size dim, which no layer or size rule takes
            text = f"{start}:{'' if end is None else end}{'' if step == 1 else f':{step}'}"
            ctx.fail(f"slice [{text}] of dim {d} (size {size}) is empty",
                     hint=f"start and end index a dim of size {size}: 0 … {size - 1}, or negative from the end")
    elif (start, end, step) == (0, None, 1):
        n = size
    else:  # how much of a runtime length a slice keeps is known at run time only
        n = f"{size}[{start}:{'' if end is None else end}{'' if step == 1 else f':{step}'}]"
    return T(x.dtype, x.shape[:d] + (n,) + x.shape[d + 1:])


def _select(ctx: Ctx) -> T:
    x = ctx.ins[0]
    if not x.shape:
        ctx.fail("select needs a tensor with at least one dim")
    d, i = _axis(ctx, len(x.shape)), ctx.node.attrs["index"]
    if isinstance(x.shape[d], int) and not -x.shape[d] <= i < x.shape[d]:
        ctx.fail(f"select: index {i} is out of range for dim {d} of size {x.shape[d]}")
    return T(x.dtype, x.shape[:d] + x.shape[d + 1:])


def _unsqueeze(ctx: Ctx) -> T:
    x = ctx.ins[0]
    rank, dim = len(x.shape), ctx.node.attrs["dim"]
    if not -rank - 1 <= dim <= rank:  # the new dim may stand at any of rank + 1 places
        ctx.fail(f"unsqueeze: dim {dim} is out of range for a {rank}-D input (from {-rank - 1} to {rank})")
    d = _axis(ctx, rank, extra=1)
    return T(x.dtype, x.shape[:d] + (1,) + x.shape[d:])


def _squeeze(ctx: Ctx) -> T:
    x = ctx.ins[0]
    if not x.shape:
        ctx.fail("squeeze needs a tensor with at least one dim")
    d = _axis(ctx, len(x.shape))
    if x.shape[d] != 1:
        ctx.fail(f"squeeze: dim {d} of {_fmt(x.shape)} is {x.shape[d]}, not 1")
    return T(x.dtype, x.shape[:d] + x.shape[d + 1:])


def _gather(ctx: Ctx) -> T:
    x, index = ctx.ins
    if len(index.shape) != len(x.shape):
        ctx.fail(f"gather: the index {index} needs the input's rank ({len(x.shape)})")
    _axis(ctx, len(x.shape))
    return T(x.dtype, index.shape)


def _index_select(ctx: Ctx) -> T:
    x, index = ctx.ins
    if len(index.shape) != 1:
        ctx.fail(f"index_select takes a 1-D index, got {index}")
    d = _axis(ctx, len(x.shape))
    return T(x.dtype, x.shape[:d] + index.shape + x.shape[d + 1:])


def _chunk(ctx: Ctx) -> T:
    x = ctx.ins[0]
    d, n = _axis(ctx, len(x.shape)), ctx.node.attrs["chunks"]
    size = x.shape[d]
    if not isinstance(size, int):
        ctx.fail(f"chunk needs a fixed size along dim {d}, got {size}", hint="split a fixed dim, or slice")
    if size % n:
        ctx.fail(f"chunk: {size} along dim {d} does not make {n} equal chunks")
    return T(x.dtype, x.shape[:d] + (size // n,) + x.shape[d + 1:])


def _split(ctx: Ctx) -> T:
    x = ctx.ins[0]
    d, sizes = _axis(ctx, len(x.shape)), ctx.node.attrs["sizes"]
    if isinstance(x.shape[d], int) and sum(sizes) != x.shape[d]:
        ctx.fail(f"split: the sizes {list(sizes)} add up to {sum(sizes)}, but dim {d} is {x.shape[d]}")
    if not isinstance(x.shape[d], int):
        ctx.fail(f"split needs a fixed size along dim {d}, got {x.shape[d]}")
    return T(x.dtype, x.shape[:d] + (sizes[ctx.node.attrs["index"]],) + x.shape[d + 1:])


INDEX_SHAPES = {
    "slice": _slice, "select": _select, "unsqueeze": _unsqueeze, "squeeze": _squeeze,
    "gather": _gather, "index_select": _index_select, "chunk": _chunk, "split": _split,
}


def _integer_index(ctx: Ctx) -> None:
    if ctx.ins[1].dtype not in INTEGERS:
        ctx.fail(f"{ctx.node.op} takes an integer index, got {ctx.ins[1].dtype}", hint='cast(index, "i64")')
    if ctx.node.op == "gather" and ctx.ins[1].dtype != "i64":  # torch.gather takes int64 indices only
        ctx.fail(f"gather takes an i64 index, got {ctx.ins[1].dtype}", hint='cast(index, "i64")')


INDEX_DTYPES = {"gather": _integer_index, "index_select": _integer_index}
