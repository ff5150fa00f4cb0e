"""`ONNX_EMIT[op]`: how each IR op and layer kind lowers to ONNX opset-18 nodes.

A rule takes the `GraphBuilder` and the IR `Node` and returns the ONNX name of the node's value
(or None for a literal). Semantics are torch.nn.functional's in fp32; each table row's trailing
comment gives its formula. Layer kinds read their tensors through `GraphBuilder.weight`, so a
shared or transposed parameter reads its group's one initializer.

A weight is never transposed in the graph: a product with a matrix stored in the other
orientation is a Gemm with transA/transB (for x of rank ≠ 2, flattened to 2-D around it), and a
product with one stored as used reads it directly. onnxsim, onnxslim, onnxoptimizer and
onnxruntime's optimizer would each fold `Transpose(initializer)` into a second copy of the weight.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from tiec.backends.onnx.builder import ONNX_DTYPES, GraphBuilder
from tiec.backends.onnx.ops_attention import ATTENTION_EMIT
from tiec.backends.onnx.ops_index import INDEX_EMIT
from tiec.backends.onnx.ops_layers import LAYER_EMIT
from tiec.backends.onnx.ops_math import MATH_EMIT
from tiec.backends.onnx.ops_norm import NORM_EMIT
from tiec.compiler.ir import Node

Rule = Callable[[GraphBuilder, Node], "str | None"]


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _x(b: GraphBuilder, node: Node) -> str:
    return b.value(node.inputs[0])


# ---------------------------------------------------------------------------- functions


def _param(b: GraphBuilder, node: Node) -> str:
    return b.lazy_weight(node.attrs["param"], bool(node.attrs.get("transposed", False)))


def _const(b: GraphBuilder, node: Node) -> None:
    b.literal(node, node.attrs["value"])


def _binary(op_type: str) -> Rule:
    def rule(b: GraphBuilder, node: Node) -> str:
        operands = [i for i in node.inputs if not b.is_literal(i)]
        # Every operand is cast to the result's dtype, as torch promotes: i64 * 0.5 and i64 / 2 are
        # f32, so the integer tensor is cast before the op, never the literal truncated to an int.
        target = (b.result_dtype(node) if op_type != "MatMul" else None) or (
            b.dtype(operands[0]) if operands else None)
        args = []
        for i in node.inputs:
            v = b.value(i, target)
            if not b.is_literal(i) and target is not None and b.dtype(i) not in (None, target):
                v = b.node("Cast", [v], to=ONNX_DTYPES[target])
            args.append(v)
        return b.node(op_type, args)

    return rule


def _matmul(b: GraphBuilder, node: Node) -> str:
    a, w = node.inputs
    same = b.dtype(a) == b.dtype(w)
    right, left = b.stored_transpose(w), b.stored_transpose(a)
    if right is not None and same and not b.is_literal(a):  # a @ Sᵀ, S stored [n, k]
        return gemm_t(b, b.value(a), right, bias=None, rank=_known_rank(b, a))
    if left is not None and same and _known_rank(b, w) == 2:  # Sᵀ @ w, S stored [k, m]
        return b.node("Gemm", [left, b.value(w)], transA=1)
    if same and 1 in (_known_rank(b, a), _known_rank(b, w)) and _known_rank(b, a) != _known_rank(b, w):
        return _matmul_vector(b, a, w)
    return _binary("MatMul")(b, node)


def _matmul_vector(b: GraphBuilder, a: str, w: str) -> str:
    """A product with a 1-D operand, made 2-D around the MatMul: onnxruntime 1.32's
    MatmulTransposeFusion (EXTENDED and ALL) computes Transpose(x) @ v wrongly for a 1-D v."""
    if _known_rank(b, w) == 1:  # [..., n, k] @ [k] = ([..., n, k] @ [k, 1])[..., 0]
        product = b.node("MatMul", [b.value(a), b.node("Unsqueeze", [b.value(w), b.ints([1])])])
        return b.node("Squeeze", [product, b.ints([-1])])
    product = b.node("MatMul", [b.node("Unsqueeze", [b.value(a), b.ints([0])]), b.value(w)])  # [k] @ [..., k, m]
    return b.node("Squeeze", [product, b.ints([-2])])


def _known_rank(b: GraphBuilder, value: str) -> int | None:
    shape = b.shape(value)
    return None if shape is None else len(shape)


def _unary(op_type: str) -> Rule:
    return lambda b, node: b.node(op_type, [_x(b, node)])


def _silu(b: GraphBuilder, node: Node) -> str:
    x = _x(b, node)
    return b.node("Mul", [x, b.node("Sigmoid", [x])])


def _gelu(b: GraphBuilder, node: Node) -> str:
    x, t = _x(b, node), b.dtype(node.inputs[0]) or "f32"
    if node.attrs.get("approximate", "none") == "tanh":
        cube = b.node("Mul", [b.node("Mul", [x, x]), x])
        inner = b.node("Add", [x, b.node("Mul", [cube, b.scalar(0.044715, t)])])
        g = b.node("Tanh", [b.node("Mul", [inner, b.scalar(math.sqrt(2 / math.pi), t)])])
    else:
        g = b.node("Erf", [b.node("Mul", [x, b.scalar(math.sqrt(0.5), t)])])
    return b.node("Mul", [b.node("Mul", [x, b.scalar(0.5, t)]), b.node("Add", [g, b.scalar(1, t)])])


def _axis_op(op_type: str) -> Rule:
    return lambda b, node: b.node(op_type, [_x(b, node)], axis=int(node.attrs["dim"]))


def _flatten(b: GraphBuilder, node: Node) -> str:
    x, shape = _x(b, node), b.shape(node.inputs[0])
    start, end = int(node.attrs.get("start_dim", 1)), int(node.attrs.get("end_dim", -1))
    if shape is None:
        if start < 0 or end != -1:
            b.rank(node.inputs[0], node)  # raises: the rank is needed
        return b.node("Reshape", [x, b.ints([0] * start + [-1])])
    rank = max(len(shape), 1)
    start, end = start % rank, end % rank
    if start >= end:
        return x
    # Reshape's 0 copies the dim at the same index, so only leading dims may use it.
    tail = list(shape[end + 1:])
    if all(isinstance(d, int) for d in tail):
        target = b.ints([0] * start + [-1] + tail)
    else:
        parts = [b.node("Shape", [x], end=start)] if start else []
        target = b.node("Concat", [*parts, b.ints([-1]), b.node("Shape", [x], start=end + 1)], axis=0)
    return b.node("Reshape", [x, target])


def _transpose(b: GraphBuilder, node: Node) -> str:
    rank = b.rank(node.inputs[0], node)
    d0, d1 = int(node.attrs["dim0"]) % rank, int(node.attrs["dim1"]) % rank
    if d0 == d1:
        return _x(b, node)
    if rank == 2 and (lazy := b.transposed_value(node.inputs[0])) is not None:
        return lazy  # a weight: products read it as stored (`_matmul`)
    perm = list(range(rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return b.node("Transpose", [_x(b, node)], perm=perm)


def _pool(op_type: str, **extra: int) -> Rule:
    def rule(b: GraphBuilder, node: Node) -> str:
        k = _pair(node.attrs["kernel"])
        s = _pair(node.attrs.get("stride") or k)
        p = _pair(node.attrs.get("padding", 0))
        x, bf16 = _x(b, node), b.dtype(node.inputs[0]) == "bf16"
        if bf16:  # ONNX pools take no bfloat16; torch pools it in f32 and rounds once, as this does
            x = b.node("Cast", [x], to=ONNX_DTYPES["f32"])
        y = b.node(op_type, [x], kernel_shape=k, strides=s, pads=p + p, **extra)
        return b.node("Cast", [y], to=ONNX_DTYPES["bf16"]) if bf16 else y

    return rule


def _axes(b: GraphBuilder, dim) -> str | None:
    if dim is None:
        return None
    return b.ints([int(dim)] if isinstance(dim, int) else [int(d) for d in dim])


def _mean(b: GraphBuilder, node: Node) -> str:
    keep = int(bool(node.attrs.get("keepdim", False)))
    return b.node("ReduceMean", [_x(b, node), _axes(b, node.attrs.get("dim"))], keepdims=keep)


def _concat(b: GraphBuilder, node: Node) -> str:
    return b.node("Concat", [b.value(i) for i in node.inputs], axis=int(node.attrs["dim"]))


def _cosine_similarity(b: GraphBuilder, node: Node) -> str:
    x, y = (b.value(i) for i in node.inputs)
    t = b.dtype(node.inputs[0]) or "f32"
    axes, eps = _axes(b, node.attrs.get("dim", 1)), b.scalar(float(node.attrs.get("eps", 1e-8)), t)

    def total(u: str, v: str) -> str:
        return b.node("ReduceSum", [b.node("Mul", [u, v]), axes], keepdims=0)

    def norm(u: str) -> str:
        return b.node("Max", [b.node("Sqrt", [total(u, u)]), eps])

    return b.node("Div", [total(x, y), b.node("Mul", [norm(x), norm(y)])])


def _length(b: GraphBuilder, value: str, axis: int) -> str:
    """Dim `axis` of `value` as an i64 scalar, computed once per symbolic dim."""
    x = b.value(value)
    end = {"end": axis + 1} if axis != -1 else {}
    return b.cached(("len",) + b.dim_key(value, axis),
                    lambda: b.node("Squeeze", [b.node("Shape", [x], start=axis, **end)]))


def arange(b: GraphBuilder, value: str, axis: int) -> str:
    """0 … n-1 (i64) where n is dim `axis` of `value`, once per symbolic dim."""
    n = _length(b, value, axis)
    return b.cached(("range",) + b.dim_key(value, axis),
                    lambda: b.node("Range", [b.scalar(0, "i64"), n, b.scalar(1, "i64")]))


def _positions(b: GraphBuilder, node: Node) -> str:
    return arange(b, node.inputs[0], -1)


# ---------------------------------------------------------------------------- layers


def _slot(b: GraphBuilder, layer: str, slot: str = "bias") -> str | None:
    """The layer's tensor in that slot, or None where the layer declares no such parameter."""
    name = f"{layer}.{slot}"
    return b.weight(name) if b.param(name) is not None else None


def _linear(b: GraphBuilder, node: Node) -> str:
    layer, x = node.attrs["layer"], node.inputs[0]
    return linear(b, b.value(x), f"{layer}.weight", _slot(b, layer), _known_rank(b, x))


def linear(b: GraphBuilder, x: str, weight: str, bias: str | None, rank: int | None = None) -> str:
    """x @ W.T (+ b) for x of any rank (`rank`, where known) and declared weight W, read from its
    group's initializer as stored: a Gemm with transB when that is W, a MatMul when it is W.T."""
    stored, flip = b.stored(weight, transposed=True)
    if flip:
        return gemm_t(b, x, stored, bias, rank)
    if rank == 2:  # the initializer is W.T itself
        return b.node("Gemm", [x, stored, bias], transB=0)
    y = b.node("MatMul", [x, stored])
    return b.node("Add", [y, bias]) if bias is not None else y


def linear_2d(b: GraphBuilder, x: str, weight: str, bias: str | None) -> str:
    """x @ W.T (+ b) for a 2-D x: one Gemm on W's initializer as stored (transB=1 unless it is W.T)."""
    stored, flip = b.stored(weight, transposed=True)
    return b.node("Gemm", [x, stored, bias], transB=int(flip))


def gemm_t(b: GraphBuilder, x: str, stored: str, bias: str | None, rank: int | None) -> str:
    """x @ S.T (+ bias) for initializer S of shape [n, k] and x of shape [..., k]: Gemm(transB=1),
    with x flattened to [-1, k] and the result shaped back to [..., n] unless x is 2-D."""
    if rank == 2:
        return b.node("Gemm", [x, stored, bias], transB=1)
    y = b.node("Gemm", [b.node("Flatten", [x], axis=-1), stored, bias], transB=1)
    target = b.node("Concat", [leading_shape(b, x), b.ints([b.param(stored).shape[0]])], axis=0)
    return b.node("Reshape", [y, target])


def leading_shape(b: GraphBuilder, x: str) -> str:
    """Shape(x) without its last dim (i64 [rank - 1]), made once per value."""
    return b.cached(("lead", x), lambda: b.node("Shape", [x], end=-1))


def _conv2d(b: GraphBuilder, node: Node) -> str:
    layer = node.attrs["layer"]
    cfg = b.graph.layer(layer).config
    k, s = _pair(cfg["kernel_size"]), _pair(cfg.get("stride") or 1)
    pad = cfg.get("padding") or 0
    if pad == "same":
        attrs = {"auto_pad": "SAME_UPPER"}  # torch puts the odd pad on the bottom/right, as SAME_UPPER does
    else:
        p = [0, 0] if pad == "valid" else _pair(pad)
        attrs = {"pads": p + p}
    args = [_x(b, node), b.weight(f"{layer}.weight"), _slot(b, layer)]
    return b.node_via_f32(b.dtype(node.inputs[0]), "Conv", args, kernel_shape=k, strides=s, **attrs)


def _embedding(b: GraphBuilder, node: Node) -> str:
    stored, flip = b.stored(f"{node.attrs['layer']}.weight")
    if not flip:
        return b.node("Gather", [stored, _x(b, node)], axis=0)
    # W is stored as W.T [d, V]: gather its columns ([d, *idx]) and move d last.
    rank = b.rank(node.inputs[0], node)
    cols = b.node("Gather", [stored, _x(b, node)], axis=1)
    return b.node("Transpose", [cols], perm=[*range(1, rank + 1), 0])


def _normalized_dims(b: GraphBuilder, node: Node) -> int:
    shape = b.graph.layer(node.attrs["layer"]).config.get("normalized_shape")
    return 1 if shape is None or isinstance(shape, int) else len(shape)


def _layer_norm(b: GraphBuilder, node: Node) -> str:
    layer = node.attrs["layer"]
    eps = b.graph.layer(layer).config.get("eps")
    args = [_x(b, node), b.weight(f"{layer}.weight"), _slot(b, layer)]
    return b.node("LayerNormalization", args, axis=-_normalized_dims(b, node), epsilon=1e-5 if eps is None else eps)


def _rms_norm(b: GraphBuilder, node: Node) -> str:
    layer, x, t = node.attrs["layer"], _x(b, node), b.dtype(node.inputs[0]) or "f32"
    eps = b.graph.layer(layer).config.get("eps")
    if eps is None:  # torch's default: the input dtype's machine epsilon
        eps = {"f16": 2.0 ** -10, "bf16": 2.0 ** -7, "f64": 2.0 ** -52}.get(t, 2.0 ** -23)
    k = _normalized_dims(b, node)
    ms = b.node("ReduceMean", [b.node("Mul", [x, x]), b.ints(range(-k, 0))], keepdims=1)
    y = b.node("Div", [x, b.node("Sqrt", [b.node("Add", [ms, b.scalar(eps, t)])])])
    w = _slot(b, layer, "weight")
    return b.node("Mul", [y, w]) if w is not None else y


def _dropout(b: GraphBuilder, node: Node) -> str:
    return _x(b, node)


def _causal_mask(b: GraphBuilder, value: str) -> str:
    """[T, T] bool, true above the diagonal (j > i), from x's dynamic T."""
    r = arange(b, value, 1)
    return b.cached(("causal",) + b.dim_key(value, 1),
                    lambda: b.node("Greater", [r, b.node("Reshape", [r, b.ints([-1, 1])])]))


def _self_attention(b: GraphBuilder, node: Node) -> str:
    layer, x = node.attrs["layer"], node.inputs[0]
    cfg = b.graph.layer(layer).config
    d, h = int(cfg["embed_dim"]), int(cfg["num_heads"])
    t = b.dtype(x) or "f32"
    if b.rank(x, node) != 3:
        raise b.fail(node, "SelfAttention takes a batch-first [B, T, d] input")
    # The projections are 2-D Gemms on [B·T, d], so each weight is read as stored (see `linear`).
    xv = b.value(x)
    qkv = linear_2d(b, b.node("Flatten", [xv], axis=-1), f"{layer}.in_proj_weight", _slot(b, layer, "in_proj_bias"))
    # [B·T, 3d] → [B, T, 3h, d/h] → [B, 3h, T, d/h] → q, k, v: [B, h, T, d/h] each
    split_heads = b.node("Concat", [leading_shape(b, xv), b.ints([3 * h, d // h])], axis=0)
    heads = b.node("Transpose", [b.node("Reshape", [qkv, split_heads])], perm=[0, 2, 1, 3])
    q, k, v = b.node("Split", [heads], n=3, axis=1, num_outputs=3)
    scores = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = b.node("Mul", [scores, b.scalar(1 / math.sqrt(d // h), t)])
    if cfg.get("causal"):
        scores = b.node("Where", [_causal_mask(b, x), b.scalar(-math.inf, t), scores])
    ctx = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    ctx = b.node("Reshape", [b.node("Transpose", [ctx], perm=[0, 2, 1, 3]), b.ints([-1, d])])  # [B·T, d]
    y = linear_2d(b, ctx, f"{layer}.out_proj.weight", _slot(b, layer, "out_proj.bias"))
    return b.node("Reshape", [y, b.cached(("shape", xv), lambda: b.node("Shape", [xv]))])  # [B, T, d]


def _never_called(b, n):
    raise AssertionError(f"node {n.name}: a free parameter is never called")


ONNX_EMIT: Mapping[str, Rule] = {
    "param": _param,  # W; read transposed, a reference to W that products take through Gemm's transA/transB
    "const": _const,  # no node: a scalar initializer in the result's dtype, per use
    "add": _binary("Add"),  # a + b
    "sub": _binary("Sub"),  # a - b
    "mul": _binary("Mul"),  # a * b
    "div": _binary("Div"),  # a / b
    "matmul": _matmul,  # a @ b; a @ Wᵀ as Gemm(transB), Wᵀ @ b as Gemm(transA)
    "neg": _unary("Neg"),  # -x
    "relu": _unary("Relu"),  # max(x, 0)
    "tanh": _unary("Tanh"),  # tanh(x)
    "sigmoid": _unary("Sigmoid"),  # 1 / (1 + exp(-x))
    "silu": _silu,  # x * sigmoid(x)
    "gelu": _gelu,  # 0.5·x·(1 + erf(x/√2)), or 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    "softmax": _axis_op("Softmax"),  # exp(x) / sum(exp(x), dim)
    "log_softmax": _axis_op("LogSoftmax"),  # x - log(sum(exp(x), dim))
    "flatten": _flatten,  # Reshape to [*x.shape[:s], -1, *x.shape[e+1:]]
    "reshape": lambda b, n: b.node("Reshape", [_x(b, n), b.ints(n.attrs["shape"])]),  # x.reshape(shape)
    "transpose": _transpose,  # x.transpose(dim0, dim1); of a 2-D weight, read as stored like `param`
    "max_pool2d": _pool("MaxPool"),  # max over each window, -inf padding
    "avg_pool2d": _pool("AveragePool", count_include_pad=1),  # sum(window, zero padding) / (kh·kw)
    "mean": _mean,  # sum(x, dim) / x.shape[dim]
    "concat": _concat,  # cat(xs, dim)
    "cosine_similarity": _cosine_similarity,  # Σab / (max(‖a‖, eps)·max(‖b‖, eps)) over dim
    "positions": _positions,  # Range(0, x.shape[-1], 1), i64
    "Parameter": _never_called,  # a free parameter: one initializer, read by `param` nodes
    "Linear": _linear,  # x @ W.T + b: Gemm(transB) (x flattened to 2-D), or MatMul(+Add) on a stored W.T
    "Conv2d": _conv2d,  # conv2d(x, W, b, stride, padding)
    "Embedding": _embedding,  # W[idx]
    "LayerNorm": _layer_norm,  # (x - μ) / sqrt(σ² + eps) * W + b over the normalized dims
    "RMSNorm": _rms_norm,  # x / sqrt(mean(x²) + eps) * W over the normalized dims
    "SelfAttention": _self_attention,  # softmax(QKᵀ/√(d/h) [+ causal -inf]) V per head, then out_proj
    "Dropout": _dropout,  # x (inference)
    **MATH_EMIT,  # elementwise math, comparisons, where, masked_fill, cast: ops_math.py
    **ATTENTION_EMIT,  # sdpa: ops_attention.py
    **INDEX_EMIT,  # slice, select, unsqueeze, squeeze, gather, index_select, chunk, split: ops_index.py
    **LAYER_EMIT,  # Conv1D, GroupNorm, ConvTranspose2d, adaptive_avg_pool2d: ops_layers.py
    **NORM_EMIT,  # BatchNorm1d, BatchNorm2d (eval mode, running statistics as initializers): ops_norm.py
}
