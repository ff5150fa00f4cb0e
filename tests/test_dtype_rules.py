"""Every op and layer at every dtype: the checker accepts exactly what both backends run.

For each cell of (case × dtype), with dtype in f32, f64, i64, i32 and bool, a one-op spec is
compiled twice: as `tiec check` does (the verdict), and with `shapes.DTYPE_RULES` emptied, so
that only shapes are checked (the measurement). The measured program is then run by the PyTorch
module and by onnxruntime on the exported file. A cell *runs* when torch's output has the dtype
the shape rule gives, onnxruntime's output has that dtype too, and their values agree (floats to
rtol 1e-3 / atol 1e-5, integers and bools exactly). The verdict must be "accept" exactly where
the cell runs, and a rejection must be a located error with a hint.

Deliberately stricter than the backends (listed, not silent): `LANGUAGE_RULES` below. Beyond
the matrix: bf16 pools, which ONNX has no bf16 form of, export through f32.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from tiec.compiler import shapes
from tiec.dsl.diagnostics import TieError

import tiec

DTYPES = ("f32", "f64", "i64", "i32", "bool")
TORCH = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "i64": torch.int64, "i32": torch.int32, "bool": torch.bool}
SHAPES = {"a": "[2, 4]", "b": "[2, 4]", "m": "[4, 3]", "c": "[2, 3, 4]", "img": "[1, 2, 4, 4]"}

# case name → (inputs it declares, layer declarations, the returned expression)
CASES: dict[str, tuple[str, str, str]] = {
    **{f"{op}": ("a b", "", f"a {sym} b") for op, sym in
       (("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"))},
    **{f"{op}_int_literal": ("a", "", f"a {sym} 3") for op, sym in
       (("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"))},
    **{f"{op}_float_literal": ("a", "", f"a {sym} 0.5") for op, sym in
       (("add", "+"), ("sub", "-"), ("mul", "*"), ("div", "/"))},
    "rsub_int_literal": ("a", "", "3 - a"),
    "matmul": ("a m", "", "a @ m"),
    "neg": ("a", "", "-a"),
    **{op: ("a", "", f"{op}(a)") for op in ("relu", "tanh", "sigmoid", "silu", "gelu")},
    "gelu_tanh": ("a", "", 'gelu(a, approximate="tanh")'),
    "softmax": ("a", "", "softmax(a, dim=1)"),
    "log_softmax": ("a", "", "log_softmax(a, dim=-1)"),
    "flatten": ("c", "", "flatten(c)"),
    "reshape": ("a", "", "reshape(a, [4, 2])"),
    "transpose": ("a", "", "transpose(a, 0, 1)"),
    "max_pool2d": ("img", "", "max_pool2d(img, 2)"),
    "avg_pool2d": ("img", "", "avg_pool2d(img, 2, padding=1)"),
    "mean": ("a", "", "mean(a, 1)"),
    "concat": ("a b", "", "concat([a, b], dim=1)"),
    "cosine_similarity": ("a b", "", "cosine_similarity(a, b)"),
    "positions": ("a", "", "positions(a)"),
    **{op: ("a", "", f"{op}(a)") for op in ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "erf", "abs")},
    "pow": ("a b", "", "pow(a, b)"),
    "pow_int_literal": ("a", "", "pow(a, 2)"),
    "minimum": ("a b", "", "minimum(a, b)"),
    "maximum": ("a b", "", "maximum(a, b)"),
    "clamp": ("a", "", "clamp(a, min=0, max=2)"),
    **{op: ("a b", "", f"{op}(a, b)") for op in ("eq", "ne", "lt", "le", "gt", "ge")},
    "lt_int_literal": ("a", "", "lt(a, 1)"),
    "lt_float_literal": ("a", "", "lt(a, 0.5)"),
    "eq_float_literal": ("a", "", "eq(a, 0.5)"),
    "logical_and": ("a b", "", "logical_and(a, b)"),
    "logical_or": ("a b", "", "logical_or(a, b)"),
    "logical_not": ("a", "", "logical_not(a)"),
    "where": ("a b", "", "where(eq(a, b), a, b)"),
    "where_float_literal": ("a b", "", "where(eq(a, b), a, 0.5)"),
    "masked_fill": ("a b", "", "masked_fill(a, eq(a, b), 3.0)"),
    **{f"cast_{t}": ("a", "", f'cast(a, "{t}")') for t in ("f32", "f64", "i64", "i32", "bool")},
    "cast_like": ("a", "", 'cast_like(a, cast(a, "f64"))'),
    "slice": ("c", "", "slice(c, 1, 1)"),
    "select": ("c", "", "select(c, -1, 2)"),
    "unsqueeze_squeeze": ("a", "", "squeeze(unsqueeze(a, 0), 0)"),
    "index_select": ("a", "", "index_select(a, 1, positions(a))"),
    "chunk": ("a", "p, q = chunk(a, 2, dim=1)", "q"),
    "split": ("c", "p, q = split(c, [1, 3], dim=-1)", "q"),
    "sdpa": ("c", "", "sdpa(c, c, c)"),
    "sdpa_causal": ("c", "", "sdpa(c, c, c, causal=true)"),
    "Linear": ("a", "l = Linear(4, 3)", "l(a)"),
    "Conv2d": ("img", "l = Conv2d(2, 3, 3, padding=1)", "l(img)"),
    "Embedding": ("a", "l = Embedding(10, 3)", "l(a)"),
    "LayerNorm": ("a", "l = LayerNorm(4)", "l(a)"),
    "RMSNorm": ("a", "l = RMSNorm(4)", "l(a)"),
    "SelfAttention": ("c", "l = SelfAttention(4, 2, causal=true)", "l(c)"),
    "Dropout": ("a", "l = Dropout(0.25)", "l(a)"),
    "Conv1D": ("a", "l = Conv1D(3, 4)", "l(a)"),
    "GroupNorm": ("img", "l = GroupNorm(2, 2)", "l(img)"),
    "ConvTranspose2d": ("img", "l = ConvTranspose2d(2, 3, 3, stride=2, padding=1)", "l(img)"),
    "BatchNorm1d": ("a", "l = BatchNorm1d(4)", "l(a)"),
    "BatchNorm1d_3d": ("c", "l = BatchNorm1d(3, affine=false)", "l(c)"),
    "BatchNorm2d": ("img", "l = BatchNorm2d(2)", "l(img)"),
    "adaptive_avg_pool2d": ("img", "", "adaptive_avg_pool2d(img, 1)"),
    "adaptive_avg_pool2d_2x2": ("img", "", "adaptive_avg_pool2d(img, 2)"),
}

# Cells the language rejects although both backends would run them, and why.
LANGUAGE_RULES = {
    # torch computes bool / bool and bool / 3 in f32, but every other bool arithmetic either
    # fails in torch (-b, b - b), changes dtype (b + 3 is i64), or has no onnxruntime kernel
    # (Add, Mul and MatMul on bool): one rule, "bool tensors take no arithmetic", is simpler.
    ("div", "bool"), ("div_int_literal", "bool"), ("div_float_literal", "bool"),
    ("add_float_literal", "bool"), ("mul_float_literal", "bool"),
    # bool < 0.5 runs (both cast the bool to f32), but ordering bools is arithmetic on them
    ("lt_float_literal", "bool"),
}


def spec(case: str, dtype: str) -> str:
    names, layers, expr = CASES[case]
    lines = [f"    in {n}: {dtype}{SHAPES[n]}" for n in names.split()] + ([f"    {layers}"] if layers else [])
    return "model M {\n" + "\n".join(lines) + f"\n    return {expr}\n}}\n"


def sample(dtype: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if dtype == "bool":
        return torch.rand(shape, generator=gen) > 0.5
    if dtype in ("i32", "i64"):  # 1…9: valid embedding indices, and no integer division by zero
        return torch.randint(1, 10, shape, generator=gen, dtype=TORCH[dtype])
    return torch.randn(shape, generator=gen, dtype=TORCH[dtype])


def verdict(text: str) -> TieError | None:
    try:
        tiec.loads(text, filename="dtype.tie")
    except TieError as e:
        return e
    return None


def measure(text: str, tmp_path, monkeypatch) -> str | None:
    """None when both backends run `text` as its shape rule types it, else what goes wrong."""
    with monkeypatch.context() as m:  # for the whole run: types may be inferred when first asked for
        m.setattr(shapes, "DTYPE_RULES", {})
        return _run(tiec.loads(text, filename="dtype.tie"), tmp_path)


def _run(program: tiec.Program, tmp_path, rtol: float = 1e-3, atol: float = 1e-5) -> str | None:
    graph, types = program.ir.models["M"], program.ir.types["M"]
    want = types[graph.outputs[0].value].dtype
    gen = torch.Generator().manual_seed(0)
    feeds = {i.name: sample(i.type.dtype, tuple(i.type.shape), gen) for i in graph.inputs}
    module = program.torch("M").eval()
    try:
        with torch.no_grad():
            got = module(*feeds.values())
    except (RuntimeError, TypeError, NotImplementedError) as e:
        return f"torch: {str(e).splitlines()[0]}"
    if got.dtype != TORCH[want]:
        return f"torch gives {got.dtype}, the rule {want}"
    path = tmp_path / "m.onnx"
    try:
        program.onnx(path, model="M", weights=module)
    except TieError as e:  # onnx.checker rejects the graph
        return f"ONNX export: {e.message[:200]}"
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    except Exception as e:  # noqa: BLE001 - onnxruntime's error types are not public
        return f"onnxruntime: {str(e).splitlines()[0][:200]}"
    if out.dtype != got.numpy().dtype:
        return f"onnxruntime gives {out.dtype}, torch {got.dtype}"
    if want in shapes.FLOATS:
        if not np.allclose(out, got.numpy(), rtol=rtol, atol=atol, equal_nan=True):
            return "onnxruntime and torch disagree"
    elif not np.array_equal(out, got.numpy()):
        return "onnxruntime and torch disagree"
    return None


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_checker_accepts_what_both_backends_run(case, dtype, tmp_path, monkeypatch):
    text = spec(case, dtype)
    error, problem = verdict(text), measure(text, tmp_path, monkeypatch)
    if (case, dtype) in LANGUAGE_RULES:
        assert problem is None, f"listed as a language rule, but the backends fail: {problem}"
        assert error is not None and error.hint == "bool tensors take no arithmetic"
        return
    if error is None:
        assert problem is None, f"the checker accepts {case} on {dtype}, but {problem}"
    else:
        assert problem is not None, f"the checker rejects {case} on {dtype}, which both backends run:\n{error.render()}"
        at = f"dtype.tie:{text.count(chr(10)) - 1}:12: error: "  # the return line, at the op
        assert error.render().startswith(at) and error.hint, error.render()


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_bf16_pools_export_through_f32_as_torch_computes_them(op, tmp_path):
    """ONNX pools take no bfloat16: the export casts to f32 and back. onnxruntime's Python API
    cannot feed bfloat16, so the check wraps the file in casts from and to f32."""
    program = tiec.loads(f"model M {{\n    in x: bf16[1, 2, 5, 5]\n    return {op}(x, 3, stride=2, padding=1)\n}}\n")
    program.onnx(tmp_path / "m.onnx", model="M")
    proto = onnx.load(tmp_path / "m.onnx")
    g = proto.graph
    inner, outer = g.input[0].name, g.output[0].name
    for node in g.node:
        node.input[:] = [f"{i}_bf16" if i == inner else i for i in node.input]
        node.output[:] = [f"{o}_bf16" if o == outer else o for o in node.output]
    g.node.insert(0, helper.make_node("Cast", [inner], [f"{inner}_bf16"], to=onnx.TensorProto.BFLOAT16))
    g.node.append(helper.make_node("Cast", [f"{outer}_bf16"], [outer], to=onnx.TensorProto.FLOAT))
    g.input[0].type.tensor_type.elem_type = g.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(0)).bfloat16()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {inner: x.float().numpy()})
    assert np.array_equal(got, program.torch("M")(x).float().numpy())


# Layers holding parameters of each float dtype (the program's dtype: `--dtype`). bf16 is left
# out: numpy, and so onnxruntime's Python feeds, have no bfloat16.
LAYER_CASES = [case for case, (_, layers, _) in CASES.items() if "=" in layers and "(" in layers.split("=")[1]
               and layers.split("=")[1].strip()[0].isupper()]


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("dtype", ("f64", "f16"))
@pytest.mark.parametrize("case", LAYER_CASES)
def test_layers_at_each_parameter_dtype(case, dtype, tmp_path, monkeypatch):
    text = spec(case, "i64" if case == "Embedding" else dtype)
    try:
        tiec.loads(text, filename="dtype.tie", dtype=dtype)
        error = None
    except TieError as e:
        error = e
    with monkeypatch.context() as m:
        m.setattr(shapes, "DTYPE_RULES", {})
        problem = _run(tiec.loads(text, filename="dtype.tie", dtype=dtype), tmp_path, rtol=1e-2, atol=1e-3)
    if error is None:
        assert problem is None, f"the checker accepts {case} with {dtype} parameters, but {problem}"
    else:
        assert problem is not None, f"the checker rejects {case} with {dtype} parameters, which both run"
        assert error.hint, error.render()
