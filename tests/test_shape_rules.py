"""The shapes pass on hand-built graphs: one rule of `shapes.SHAPE_RULES` at a time.

Symbolic dims (`B`, `T`) must stay symbolic through flatten, broadcasting and matmul; integer
dims must agree exactly; convolution and pooling sizes follow ⌊(H + 2p − k)/s⌋ + 1.
"""
from __future__ import annotations

import pytest
from tiec.compiler import ir, shapes
from tiec.compiler.ir import frozen
from tiec.dsl.diagnostics import Source, Span, TieError

SRC = Source("shapes.tie", "x\n" * 10)
S = Span(SRC, 5, 1, 5, 2)


def infer(inputs: dict, *nodes: tuple, layers=(), params=()) -> dict[str, str]:
    """Types of every value, as strings; `nodes` are (op, name, inputs, attrs)."""
    ins = tuple(ir.Input(n, t if isinstance(t, ir.TensorType) else ir.TensorType("f32", t), S)
                for n, t in inputs.items())
    body = tuple(ir.Node(op, name, tuple(i), frozen(a), S) for op, name, i, a in nodes)
    g = ir.Graph("M", frozen(), frozen(), ins, tuple(layers), tuple(params), body, (), S)
    return {k: str(v) for k, v in shapes.infer(g).items()}


def one(op: str, *shapes_in, **attrs) -> str:
    names = [f"x{i}" for i in range(len(shapes_in))]
    return infer(dict(zip(names, shapes_in)), (op, "y", names, attrs))["y"]


def layer(kind: str, **config) -> ir.Layer:
    return ir.Layer("l", kind, frozen(config), S)


def call(kind: str, x, **config) -> str:
    return infer({"x": x}, (kind, "y", ["x"], {"layer": "l"}), layers=[layer(kind, **config)])["y"]


CONV = {"in_channels": 3, "out_channels": 8, "bias": True}


# ----------------------------------------------------------------------------- symbols


@pytest.mark.parametrize("shape, start, end, out", [
    (("B", "T", 4), 1, -1, "f32[B, 4*T]"),
    (("B", "T", 4), 0, 1, "f32[B*T, 4]"),
    (("B", 2, 3, 4), 1, -1, "f32[B, 24]"),
    ((2, 3), 0, -1, "f32[6]"),
])
def test_flatten_multiplies_keeping_symbols(shape, start, end, out):
    assert one("flatten", shape, start_dim=start, end_dim=end) == out


@pytest.mark.parametrize("a, b, out", [
    (("B", 1, 4), ("T", 1), "f32[B, T, 4]"),
    (("B", 4), (4,), "f32[B, 4]"),  # a missing dim broadcasts as 1
    ((4,), ("B", 4), "f32[B, 4]"),
    ((3, 1), (1, 4), "f32[3, 4]"),
    (("B", 4), (5, 4), "f32[5, 4]"),  # a symbol against an int: the int is what it must be
    (("B", "T"), ("B", "T"), "f32[B, T]"),
])
def test_broadcast(a, b, out):
    assert one("add", a, b) == out and one("mul", b, a) == out


def test_broadcast_mismatch_names_the_dim():
    with pytest.raises(TieError, match=r"shapes \[2, 4\] and \[3\] do not broadcast \(dim -1: 4 vs 3\)") as info:
        one("sub", (2, 4), (3,))
    assert info.value.span == S


@pytest.mark.parametrize("a, b, out", [
    (("B", "T", 4), (4, 5), "f32[B, T, 5]"),
    (("B", 4), (4,), "f32[B]"),
    ((4,), ("B", 4, 5), "f32[B, 5]"),
    (("B", 1, 2, 3), ("H", 3, 5), "f32[B, H, 2, 5]"),
    (("B", "T", "D"), ("D", 7), "f32[B, T, 7]"),
])
def test_matmul(a, b, out):
    assert one("matmul", a, b) == out


def test_matmul_inner_dims():
    with pytest.raises(TieError, match=r"inner dims 4 and 3 differ"):
        one("matmul", ("B", 4), (3, 5))
    with pytest.raises(TieError, match="dtypes differ"):
        infer({"a": ir.TensorType("f16", (2, 2)), "b": (2, 2)}, ("matmul", "y", ["a", "b"], {}))


# ----------------------------------------------------------------------------- spatial sizes


@pytest.mark.parametrize("kernel, stride, padding, hw, out", [
    ((3, 3), (1, 1), (0, 0), (32, 32), "f32[N, 8, 30, 30]"),
    ((5, 5), (2, 2), (2, 2), (32, 32), "f32[N, 8, 16, 16]"),  # (32 + 4 - 5) // 2 + 1
    ((3, 1), (2, 1), (1, 0), (7, 5), "f32[N, 8, 4, 5]"),
    ((1, 1), (1, 1), (0, 0), ("H", "W"), "f32[N, 8, H, W]"),
    ((3, 3), (1, 1), (1, 1), ("H", 9), "f32[N, 8, (H+2-3)//1+1, 9]"),
])
def test_conv2d_output_size(kernel, stride, padding, hw, out):
    x = ("N", 3, *hw)
    assert call("Conv2d", x, kernel_size=kernel, stride=stride, padding=padding, **CONV) == out


def test_conv2d_errors():
    good = {"kernel_size": (3, 3), "stride": (1, 1), "padding": (0, 0), **CONV}
    with pytest.raises(TieError, match=r"expects 3 channels, got 4"):
        call("Conv2d", ("N", 4, 8, 8), **good)
    with pytest.raises(TieError, match=r"expects \[N, C, H, W\]"):
        call("Conv2d", (3, 8, 8), **good)
    with pytest.raises(TieError, match="input size 2 is smaller than the kernel 3"):
        call("Conv2d", ("N", 3, 2, 8), **good)


@pytest.mark.parametrize("op, kernel, stride, padding, out", [
    ("max_pool2d", (2, 2), (2, 2), (0, 0), "f32[N, 4, 3, 3]"),  # floor(7 / 2)
    ("avg_pool2d", (3, 3), (2, 2), (1, 1), "f32[N, 4, 4, 4]"),  # (7 + 2 - 3) // 2 + 1
    ("max_pool2d", (7, 1), (1, 1), (0, 0), "f32[N, 4, 1, 7]"),
])
def test_pool_output_size(op, kernel, stride, padding, out):
    assert one(op, ("N", 4, 7, 7), kernel=kernel, stride=stride, padding=padding) == out


def test_pool_padding_limit():
    with pytest.raises(TieError, match="padding must be at most half the kernel"):
        one("max_pool2d", ("N", 4, 7, 7), kernel=(2, 2), stride=(2, 2), padding=(2, 2))


# ----------------------------------------------------------------------------- other rules


@pytest.mark.parametrize("target, out", [
    (("B", -1), "f32[B, 24]"),
    (("B", 2, -1), "f32[B, 2, 12]"),
    ((0, 4, 6), "f32[B, 4, 6]"),  # 0 copies the input's dim (ONNX)
    ((-1,), "f32[24*B]"),
])
def test_reshape(target, out):
    assert one("reshape", ("B", 4, 6), shape=target) == out


@pytest.mark.parametrize("shape, target, out", [
    (("B", "W"), (0, 2, -1), "f32[B, 2, (W)//2]"),  # the symbol the target copies is not divided again
    (("B", "T", 6), (0, 4, -1), "f32[B, 4, (6*T)//4]"),
    (("B", "T", 6), (-1, 4), "f32[(6*B*T)//4, 4]"),
])
def test_reshape_infers_a_symbolic_dim_from_what_the_target_leaves(shape, target, out):
    assert one("reshape", shape, shape=target) == out


@pytest.mark.parametrize("target, message", [
    (("B", 5, -1), "cannot reshape"),
    (("B", 5), "has 24\\*B elements"),
    (("T", -1), "symbol 'T' must stand where the input has it"),
    (("B", -1, -1), "at most one dim can be -1"),
])
def test_reshape_errors(target, message):
    with pytest.raises(TieError, match=message):
        one("reshape", ("B", 4, 6), shape=target)


def test_concat_sizes_add_up():
    assert one("concat", ("B", 3), ("B", 5), ("B", 1), dim=1) == "f32[B, 9]"
    assert one("concat", ("B", "T"), ("B", 2), dim=-1) == "f32[B, T+2]"
    with pytest.raises(TieError, match="differ outside dim 1"):
        one("concat", ("B", 3), (4, 3, 1), dim=1)


def test_reductions_and_axes():
    assert one("mean", ("B", "T", 4), dim=1, keepdim=False) == "f32[B, 4]"
    assert one("mean", ("B", "T", 4), dim=-1, keepdim=True) == "f32[B, T, 1]"
    assert one("transpose", ("B", "T", 4), dim0=0, dim1=-1) == "f32[4, T, B]"
    assert one("cosine_similarity", ("B", 4), (1, 4), dim=1, eps=1e-8) == "f32[B]"
    assert one("softmax", ("B", 4), dim=-1) == "f32[B, 4]"
    with pytest.raises(TieError, match="dim 2 is out of range for a 2-D tensor"):
        one("log_softmax", ("B", 4), dim=2)


def test_dtypes():
    ids = ir.TensorType("i64", ("B", "T"))
    emb = {"num_embeddings": 10, "embedding_dim": 4}
    assert call("Embedding", ids, **emb) == "f32[B, T, 4]"
    with pytest.raises(TieError, match="takes integer indices, got f32"):
        call("Embedding", ("B", "T"), **emb)
    assert one("positions", ids) == "i64[T]"
    with pytest.raises(TieError, match="tanh needs a floating-point tensor, got i64"):
        one("tanh", ids)
    # a literal takes the dtype of the tensor beside it
    types = infer({"x": ir.TensorType("f16", (2,))}, ("const", "c", [], {"value": 2}), ("mul", "y", ["x", "c"], {}))
    assert types["y"] == "f16[2]"


def test_layers_check_their_last_dim():
    assert call("Linear", ("B", "T", 4), in_features=4, out_features=6, bias=True) == "f32[B, T, 6]"
    assert call("Linear", ("B", "D"), in_features=4, out_features=6, bias=True) == "f32[B, 6]"
    with pytest.raises(TieError, match=r"Linear 'l' expects in_features = 4 in the last dim, got \[B, 5\]"):
        call("Linear", ("B", 5), in_features=4, out_features=6, bias=True)
    with pytest.raises(TieError, match=r"LayerNorm 'l' expects normalized_shape = 8 in the last dim"):
        call("LayerNorm", ("B", 5), normalized_shape=8, eps=1e-5)
    att = {"embed_dim": 8, "num_heads": 2, "causal": False, "bias": True}
    assert call("SelfAttention", ("B", "T", 8), **att) == "f32[B, T, 8]"
    with pytest.raises(TieError, match=r"expects \[B, T, d\]"):
        call("SelfAttention", ("B", 8), **att)


def test_transposed_parameter_reference():
    p = ir.Param("l.weight", "l", "weight", (6, 4), "f32", S)
    lin = layer("Linear", in_features=4, out_features=6, bias=False)
    types = infer({}, ("param", "w", [], {"param": "l.weight", "transposed": True}),
                  ("param", "v", [], {"param": "l.weight", "transposed": False}), layers=[lin], params=[p])
    assert (types["w"], types["v"]) == ("f32[4, 6]", "f32[6, 4]")


def test_block_input_check():
    check = ir.Check("x", ir.TensorType("f32", ("B", 8)), S, Span(SRC, 2, 1, 2, 2))
    g = ir.Graph("M", frozen(), frozen(), (ir.Input("x", ir.TensorType("f32", ("N", 4)), S),), (), (), (), (), S,
                 checks=(check,))
    with pytest.raises(TieError, match=r"must be f32\[B, 8\], but f32\[N, 4\] is passed") as info:
        shapes.infer(g)
    assert info.value.notes[0][0].line == 2
