"""Shape and dtype inference over every node, with symbolic dims.

Rule: each op's output type follows from its inputs' types by the rule in `SHAPE_RULES[op]`
(PyTorch semantics). Integer dims must agree exactly; a symbolic dim (`B`, `T`) agrees with any
dim, and a dim computed from symbols is written as an expression (`B*T`). A mismatch is an error
at the call that caused it. A block input's declared type (a `Check`) is verified at each call.

Which dtypes an op's tensor operands may have is a second table, `DTYPE_RULES[op]`, checked
before the shape rule: an op takes a dtype only where PyTorch runs it, giving the dtype the shape
rule says, and onnxruntime runs the exported graph (tests/test_dtype_rules.py measures every cell
against both backends).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from math import prod

from tiec.dsl.diagnostics import TieError

from . import ir
from .catalog import LAYERS

T = ir.TensorType
FLOATS = ("f32", "f16", "bf16", "f64")
INTEGERS = ("i32", "i64")


class Ctx:
    """What a rule may consult: the node, its graph, the input types, the literals' values by
    value name (`consts`), and inside a block the dims
    its declared input symbols stand for at this call (`symbols`: `N` → `B` for `in x: [N, L, D]`
    called on `[B, T, 8]`)."""

    def __init__(self, graph: ir.Graph, node: ir.Node, ins: list[T], consts: Mapping[str, float],
                 symbols: dict[str, ir.Dim] | None = None):
        self.graph, self.node, self.ins, self.consts = graph, node, ins, consts
        self.symbols = symbols or {}

    def fail(self, message: str, hint: str | None = None):
        raise TieError(message, self.node.span, hint=hint)

    @property
    def layer(self) -> ir.Layer:
        return self.graph.layer(self.node.attrs["layer"])

    def axis(self, dim: int, rank: int) -> int:
        if not -rank <= dim < rank:
            self.fail(f"{self.node.op}: dim {dim} is out of range for a {rank}-D tensor")
        return dim % rank


def same(a, b) -> bool:
    return not (isinstance(a, int) and isinstance(b, int)) or a == b


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _mul(dims) -> ir.Dim:
    ints = [d for d in dims if isinstance(d, int)]
    syms = [d for d in dims if not isinstance(d, int)]
    n = prod(ints)
    if not syms:
        return n
    return "*".join(([str(n)] if n != 1 else []) + syms)


def broadcast(ctx: Ctx, a: tuple, b: tuple) -> tuple:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        elif same(x, y):  # a symbol against an int: the int is what it must be
            out.append(x if isinstance(x, int) or not isinstance(y, int) else y)
        else:
            ctx.fail(f"shapes {_fmt(a)} and {_fmt(b)} do not broadcast (dim {-i}: {x} vs {y})")
    return tuple(reversed(out))


def _elementwise(ctx: Ctx) -> T:
    a, b = ctx.ins
    na, nb = ctx.node.inputs
    if na in ctx.consts or nb in ctx.consts:  # a literal takes the tensor's dtype, as in PyTorch…
        tensor, literal = (b, a) if na in ctx.consts else (a, b)
        dtype = tensor.dtype
        if dtype not in FLOATS and (literal.dtype in FLOATS or ctx.node.op == "div"):
            dtype = "f32"  # …except that a float literal, or true division, makes an integer tensor float
        check_fits(ctx, ctx.consts[na if na in ctx.consts else nb], dtype)
        return T(dtype, tensor.shape)
    dtype = promote(a, b)
    dtype = "f32" if ctx.node.op == "div" and dtype not in FLOATS else dtype  # int / int is float division
    return T(dtype, broadcast(ctx, a.shape, b.shape))


_RANK = {"bool": 0, "i32": 1, "i64": 2, "f16": 3, "bf16": 3, "f32": 4, "f64": 5}
INT_RANGE = {"i32": (-2 ** 31, 2 ** 31 - 1), "i64": (-2 ** 63, 2 ** 63 - 1)}


def check_fits(ctx: Ctx, value, dtype: str, what: str = "the number") -> None:
    """A number an op computes in an integer dtype must be representable in it: PyTorch raises on
    one that is not, or wraps it silently (`i32 + 3000000000`), and onnxruntime cannot hold it."""
    if dtype in INT_RANGE and not isinstance(value, (bool, str)) and value is not None:
        lo, hi = INT_RANGE[dtype]
        if not lo <= value <= hi:
            shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
            ctx.fail(f"{what} {shown} does not fit in {dtype} (from {lo:,} to {hi:,})",
                     hint='cast the tensor to a float first: cast(x, "f32")')


def promote(a: T, b: T) -> str:
    """PyTorch's result dtype for two tensors: the higher category (integer < float) wins, and
    within one, the wider dtype (f16 with bf16 gives f32); a 0-dim tensor beside a tensor of
    its own category or a higher one takes the other's dtype."""
    if a.dtype == b.dtype:
        return a.dtype
    floats = (a.dtype in FLOATS, b.dtype in FLOATS)
    if floats[0] != floats[1]:
        return a.dtype if floats[0] else b.dtype
    if not a.shape and b.shape:
        return b.dtype
    if not b.shape and a.shape:
        return a.dtype
    if {a.dtype, b.dtype} == {"f16", "bf16"}:
        return "f32"
    return max(a.dtype, b.dtype, key=_RANK.__getitem__)


def _matmul(ctx: Ctx) -> T:
    a, b = ctx.ins
    if not a.shape or not b.shape:
        ctx.fail("'@' needs tensors of at least one dimension")
    if a.dtype != b.dtype:
        ctx.fail(f"'@': dtypes differ ({a.dtype} and {b.dtype})")
    k_b = b.shape[-2] if len(b.shape) > 1 else b.shape[0]
    if not same(a.shape[-1], k_b):
        ctx.fail(f"'@': {_fmt(a.shape)} @ {_fmt(b.shape)}: inner dims {a.shape[-1]} and {k_b} differ")
    if len(b.shape) == 1:
        return T(a.dtype, a.shape[:-1])
    if len(a.shape) == 1:
        return T(a.dtype, b.shape[:-2] + b.shape[-1:])
    batch = broadcast(ctx, a.shape[:-2], b.shape[:-2])
    return T(a.dtype, batch + (a.shape[-2], b.shape[-1]))


def _unary(ctx: Ctx) -> T:
    return ctx.ins[0]


def _last_dim(ctx: Ctx, want: int, what: str) -> T:
    x = ctx.ins[0]
    if not x.shape or not same(x.shape[-1], want):
        ctx.fail(f"{ctx.layer.kind} '{ctx.layer.path}' expects {what} {want} in the last dim, got {_fmt(x.shape)}",
                 hint=f"the input comes in as {x}")
    return x


def _linear(ctx: Ctx) -> T:
    c = ctx.layer.config
    x = _last_dim(ctx, c["in_features"], "in_features =")
    return T(x.dtype, x.shape[:-1] + (c["out_features"],))


def _spatial(ctx: Ctx, size, k, s, p, what: str) -> ir.Dim:
    if not isinstance(size, int):
        return f"({size}+{2 * p}-{k})//{s}+1" if (p, k, s) != (0, 1, 1) else size
    out = (size + 2 * p - k) // s + 1
    if out < 1:
        ctx.fail(f"{what}: input size {size} is smaller than the kernel {k} (padding {p})")
    return out


def _conv2d(ctx: Ctx) -> T:
    c, x = ctx.layer.config, ctx.ins[0]
    if len(x.shape) != 4:
        ctx.fail(f"Conv2d '{ctx.layer.path}' expects [N, C, H, W], got {_fmt(x.shape)}")
    if not same(x.shape[1], c["in_channels"]):
        ctx.fail(f"Conv2d '{ctx.layer.path}' expects {c['in_channels']} channels, got {x.shape[1]} ({_fmt(x.shape)})")
    (kh, kw), (sh, sw), (ph, pw) = c["kernel_size"], c["stride"], c["padding"]
    what = f"Conv2d '{ctx.layer.path}'"
    return T(x.dtype, (x.shape[0], c["out_channels"], _spatial(ctx, x.shape[2], kh, sh, ph, what),
                       _spatial(ctx, x.shape[3], kw, sw, pw, what)))


def _pool(ctx: Ctx) -> T:
    x, a = ctx.ins[0], ctx.node.attrs
    if len(x.shape) != 4:
        ctx.fail(f"{ctx.node.op} expects [N, C, H, W], got {_fmt(x.shape)}")
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    if ph > kh // 2 or pw > kw // 2:
        ctx.fail(f"{ctx.node.op}: padding must be at most half the kernel")
    h = _spatial(ctx, x.shape[-2], kh, sh, ph, ctx.node.op)
    w = _spatial(ctx, x.shape[-1], kw, sw, pw, ctx.node.op)
    return T(x.dtype, x.shape[:-2] + (h, w))


def _embedding(ctx: Ctx) -> T:
    x = ctx.ins[0]
    return T(ctx.layer.config.get("dtype", "f32"), x.shape + (ctx.layer.config["embedding_dim"],))


def _norm(ctx: Ctx) -> T:
    return _last_dim(ctx, ctx.layer.config["normalized_shape"], "normalized_shape =")


def _attention(ctx: Ctx) -> T:
    x = ctx.ins[0]
    if len(x.shape) != 3:
        ctx.fail(f"SelfAttention '{ctx.layer.path}' expects [B, T, d], got {_fmt(x.shape)}")
    return _last_dim(ctx, ctx.layer.config["embed_dim"], "d =")


def _softmax(ctx: Ctx) -> T:
    ctx.axis(ctx.node.attrs["dim"], len(ctx.ins[0].shape))
    return ctx.ins[0]


def _flatten(ctx: Ctx) -> T:
    x = ctx.ins[0]
    r = max(1, len(x.shape))
    s, e = ctx.axis(ctx.node.attrs["start_dim"], r), ctx.axis(ctx.node.attrs["end_dim"], r)
    if s > e:
        ctx.fail(f"flatten: start_dim {s} is after end_dim {e}")
    return T(x.dtype, x.shape[:s] + (_mul(x.shape[s:e + 1]),) + x.shape[e + 1:])


def _reshape(ctx: Ctx) -> T:
    x, target = ctx.ins[0], ctx.node.attrs["shape"]
    target = tuple(ctx.symbols.get(d, d) if isinstance(d, str) else d for d in target)  # a block's own names
    for i, d in enumerate(target):
        if isinstance(d, int) and isinstance(ctx.node.attrs["shape"][i], str):  # a block symbol bound to a size
            if not (i < len(x.shape) and x.shape[i] == d):
                ctx.fail(f"reshape: symbol '{ctx.node.attrs['shape'][i]}' ({d} at this call) must stand where the "
                         f"input has it (input {_fmt(x.shape)})", hint="use -1 for one inferred dim")
            target = target[:i] + (0,) + target[i + 1:]  # copies the input's dim, as the backends do
        elif isinstance(d, str) and not (i < len(x.shape) and x.shape[i] == d):
            ctx.fail(f"reshape: symbol '{d}' must stand where the input has it (input {_fmt(x.shape)})",
                     hint="use -1 for one inferred dim")
        if isinstance(d, int) and (d < -1 or (d == 0 and i >= len(x.shape))):
            ctx.fail(f"reshape: invalid dim {d}")
    if list(target).count(-1) > 1:
        ctx.fail("reshape: at most one dim can be -1")
    # a symbol, or 0 (ONNX: copy the input dim), takes the input's dim at that index
    known = [x.shape[i] if isinstance(d, str) or d == 0 else d for i, d in enumerate(target)]
    left = [d for d in x.shape if not isinstance(d, int)]  # input symbols the target does not place
    for d in known:
        if not isinstance(d, int):
            left.remove(d)
    n_in = prod(d for d in x.shape if isinstance(d, int))
    n_out = prod(d for d in known if isinstance(d, int) and d != -1)
    if -1 in known:
        if n_in % n_out == 0:
            known[known.index(-1)] = _mul([n_in // n_out, *left])
        elif left:  # a symbol such as "2*B" may hold the missing factor: leave the dim symbolic
            known[known.index(-1)] = f"({_mul([n_in, *left])})//{n_out}"  # the elements the target leaves
        else:
            ctx.fail(f"reshape: cannot reshape {_fmt(x.shape)} into {_fmt(target)}")
    elif left:  # without a -1 the target's count is fixed, and a runtime size would have to match it
        ctx.fail(f"reshape: the input's dim{'s' if len(left) > 1 else ''} {', '.join(map(str, left))} "
                 f"{'have' if len(left) > 1 else 'has'} no place in {_fmt(target)} (input {_fmt(x.shape)})",
                 hint=f"keep {left[0]} where the input has it, or use -1 for the dim that absorbs it")
    elif n_in != n_out:
        ctx.fail(f"reshape: {_fmt(x.shape)} has {_mul(x.shape)} elements, {_fmt(target)} has {_mul(known)}")
    return T(x.dtype, tuple(known))


def _transpose(ctx: Ctx) -> T:
    x = ctx.ins[0]
    r = len(x.shape)
    a, b = ctx.axis(ctx.node.attrs["dim0"], r), ctx.axis(ctx.node.attrs["dim1"], r)
    s = list(x.shape)
    s[a], s[b] = s[b], s[a]
    return T(x.dtype, tuple(s))


def _mean(ctx: Ctx) -> T:
    x = ctx.ins[0]
    d = ctx.axis(ctx.node.attrs["dim"], len(x.shape))
    keep = ctx.node.attrs["keepdim"]
    return T(x.dtype, x.shape[:d] + ((1,) if keep else ()) + x.shape[d + 1:])


def _concat(ctx: Ctx) -> T:
    first = ctx.ins[0]
    d = ctx.axis(ctx.node.attrs["dim"], len(first.shape))
    for t in ctx.ins[1:]:
        if len(t.shape) != len(first.shape) or t.dtype != first.dtype or any(
                not same(a, b) for i, (a, b) in enumerate(zip(first.shape, t.shape)) if i != d):
            ctx.fail(f"concat: {first} and {t} differ outside dim {d}")
    sizes = [t.shape[d] for t in ctx.ins]
    total = sum(sizes) if all(isinstance(n, int) for n in sizes) else "+".join(str(n) for n in sizes)
    return T(first.dtype, first.shape[:d] + (total,) + first.shape[d + 1:])


def _cosine(ctx: Ctx) -> T:
    a, b = ctx.ins
    shape = broadcast(ctx, a.shape, b.shape)
    d = ctx.axis(ctx.node.attrs["dim"], len(shape))
    return T(a.dtype, shape[:d] + shape[d + 1:])


def _param(ctx: Ctx) -> T:
    p = ctx.graph.param_map()[ctx.node.attrs["param"]]
    return T(p.dtype, tuple(reversed(p.shape)) if ctx.node.attrs["transposed"] else p.shape)


def _positions(ctx: Ctx) -> T:
    x = ctx.ins[0]
    if not x.shape:
        ctx.fail("positions needs a tensor with at least one dim")
    return T("i64", (x.shape[-1],))


def _const(ctx: Ctx) -> T:
    return T("f32" if isinstance(ctx.node.attrs["value"], float) else "i64", ())


def _never_called(ctx: Ctx) -> T:
    raise AssertionError("a free parameter is never called: expressions read it through a param node")


SHAPE_RULES: dict[str, Callable[[Ctx], T]] = {
    "param": _param,            # W or Wᵀ
    "const": _const,            # scalar; takes the other operand's dtype
    "add": _elementwise, "sub": _elementwise, "mul": _elementwise, "div": _elementwise,  # broadcast
    "matmul": _matmul,          # [..., n, k] @ [..., k, m] → [..., n, m]
    "neg": _unary, "relu": _unary, "tanh": _unary, "sigmoid": _unary, "silu": _unary, "gelu": _unary,
    "softmax": _softmax, "log_softmax": _softmax,
    "flatten": _flatten,        # dims start…end multiplied
    "reshape": _reshape,        # a symbol or 0 copies the input dim, -1 infers; element counts agree
    "transpose": _transpose,
    "max_pool2d": _pool, "avg_pool2d": _pool,  # ⌊(H + 2p − k)/s⌋ + 1
    "mean": _mean,
    "concat": _concat,          # sizes along dim add up
    "cosine_similarity": _cosine,  # broadcast, then drop dim
    "positions": _positions,    # [T] int64
    "Linear": _linear,          # [..., in] → [..., out]
    "Conv2d": _conv2d,          # [N, C, H, W] → [N, out, H', W']
    "Embedding": _embedding,    # [...] int → [..., dim]
    "LayerNorm": _norm, "RMSNorm": _norm,
    "SelfAttention": _attention,  # [B, T, d] → [B, T, d]
    "Dropout": lambda ctx: ctx.ins[0],
    "Parameter": _never_called,  # a free parameter is read by `param` nodes (its declared shape)
}


# ---------------------------------------------------------------------------- dtypes


def _operands(ctx: Ctx) -> list[T]:
    """The tensor operands: a literal takes the tensor's dtype, so only tensors are checked."""
    return [t for name, t in zip(ctx.node.inputs, ctx.ins) if name not in ctx.consts]


def _takes(dtypes: tuple[str, ...], what: str, hint: str | None = None) -> Callable[[Ctx], None]:
    """A check that every tensor operand has one of `dtypes`."""
    def check(ctx: Ctx) -> None:
        for t in _operands(ctx):
            if t.dtype not in dtypes:
                op = f"'{_SYMBOLS[ctx.node.op]}'" if ctx.node.op in _SYMBOLS else ctx.node.op
                ctx.fail(f"{op} needs {what}, got {t.dtype}", hint=hint or "declare the input as f32[…]")
    return check


_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@", "neg": "-"}
_floats = _takes(FLOATS, "a floating-point tensor")
_numbers = _takes(FLOATS + INTEGERS, "numbers", hint="bool tensors take no arithmetic")


def _f32_in_onnxruntime(kernel: str, applies: Callable[[ir.Node], bool] = lambda node: True) -> Callable[[Ctx], None]:
    """Floats, less f64 where the op lowers to an ONNX op that onnxruntime runs in f32 only."""
    def check(ctx: Ctx) -> None:
        _floats(ctx)
        if ctx.ins[0].dtype == "f64" and applies(ctx.node):
            ctx.fail(f"{ctx.node.op} has no f64 kernel in onnxruntime ({kernel} takes f32 there)",
                     hint='use f32, or gelu(x, approximate="tanh")' if ctx.node.op == "gelu" else "use f32")
    return check


def _layer_dtype(ctx: Ctx) -> None:
    """A layer's input must have its parameters' dtype (PyTorch does not promote inside layers)."""
    x, slots = ctx.ins[0], LAYERS[ctx.layer.kind].slots(ctx.layer.config)
    param = ctx.graph.param_map().get(f"{ctx.layer.path}.{slots[0][0]}") if slots else None
    dtype = param.dtype if param is not None else "f32"
    if x.dtype != dtype:
        ctx.fail(f"{ctx.layer.kind} '{ctx.layer.path}' has {dtype} parameters but its input is {x.dtype}",
                 hint=f"declare the model input as {dtype}[…]")


def _no_f64_kernel(kernel: str) -> Callable[[Ctx], None]:
    """A layer's dtype rule, less f64 where onnxruntime has no f64 kernel for the layer's ONNX op."""
    def check(ctx: Ctx) -> None:
        _layer_dtype(ctx)
        if ctx.ins[0].dtype == "f64":
            ctx.fail(f"{ctx.layer.kind} '{ctx.layer.path}' has no f64 kernel in onnxruntime ({kernel} takes f32 "
                     "there)", hint='use f32 or f16 parameters: dtype="f32"')
    return check


def _indices(ctx: Ctx) -> None:
    if ctx.ins[0].dtype not in INTEGERS:
        ctx.fail(f"Embedding '{ctx.layer.path}' takes integer indices, got {ctx.ins[0].dtype}",
                 hint="declare the input as i64[B, T]")


def _any(ctx: Ctx) -> None:
    return None


DTYPE_RULES: dict[str, Callable[[Ctx], None]] = {
    "add": _numbers, "sub": _numbers, "mul": _numbers, "div": _numbers, "matmul": _numbers, "neg": _numbers,
    "relu": _takes(FLOATS + INTEGERS, "a numeric tensor"),  # torch and ONNX's Relu keep integers integer
    "tanh": _floats, "sigmoid": _floats,  # (torch would make an integer tensor f32)
    "silu": _floats, "softmax": _floats, "log_softmax": _floats, "mean": _floats, "cosine_similarity": _floats,
    "gelu": _f32_in_onnxruntime("Erf", lambda node: node.attrs.get("approximate", "none") == "none"),  # Tanh takes f64
    "max_pool2d": _floats,      # torch pools integers, onnxruntime does not
    "avg_pool2d": _f32_in_onnxruntime("AveragePool"),
    "Linear": _layer_dtype, "Conv2d": _no_f64_kernel("Conv"), "LayerNorm": _layer_dtype, "RMSNorm": _layer_dtype,
    "SelfAttention": _layer_dtype, "Embedding": _indices,
}  # every other op (param, const, flatten, reshape, transpose, concat, positions, Dropout) takes any dtype


# The rules of the elementwise math, comparison, selection, cast, attention and indexing ops, and of
# the later layers, live beside this module.
from .shapes_attention import ATTENTION_DTYPES, ATTENTION_SHAPES  # last: they build on the helpers above
from .shapes_flat import check_declared, infer, reshape_targets, run  # noqa: F401  (the flat pass, re-exported)
from .shapes_index import INDEX_DTYPES, INDEX_SHAPES
from .shapes_layers import LAYER_DTYPES, LAYER_SHAPES
from .shapes_math import MATH_DTYPES, MATH_SHAPES

for _rules in (MATH_SHAPES, ATTENTION_SHAPES, INDEX_SHAPES, LAYER_SHAPES):
    SHAPE_RULES.update(_rules)
for _rules in (MATH_DTYPES, ATTENTION_DTYPES, INDEX_DTYPES, LAYER_DTYPES):
    DTYPE_RULES.update(_rules)
