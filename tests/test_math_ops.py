"""Elementwise math, comparisons, where, masked_fill and casts: the live module and onnxruntime
against hand-written PyTorch, and the types the checker gives."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiec.dsl.diagnostics import TieError

import tiec

MATH = """
model M {
    in x: f32[B, 4]
    in m: bool[B, 4]
    in i: i64[B, 4]
    a = exp(x) + log(abs(x) + 1) + sqrt(abs(x)) + rsqrt(abs(x) + 1) + sin(x) * cos(x) + erf(x)
    b = pow(x, 2) + pow(abs(x), x) + minimum(x, a) + maximum(x, a) + clamp(x, min=-1, max=0.5)
    c = where(logical_and(gt(x, 0), logical_not(m)), a, 0.0)
    d = masked_fill(b, m, -1e9) + cast(lt(i, 0.5), "f32") + cast(clamp(i, min=0, max=3), "f32")
    e = where(logical_or(ne(i, 2), eq(m, ge(x, 1))), x, c) + where(le(i, 0), -2.0, 3.0)
    return c + d + e
}
"""


def reference(x, m, i):
    """The same computation, written by hand."""
    a = (x.exp() + (x.abs() + 1).log() + x.abs().sqrt() + 1 / (x.abs() + 1).sqrt() + x.sin() * x.cos()
         + torch.special.erf(x))
    b = x * x + x.abs() ** x + torch.min(x, a) + torch.max(x, a) + x.clamp(-1, 0.5)
    c = torch.where((x > 0) & ~m, a, torch.zeros(()))
    d = torch.where(m, torch.full((), -1e9), b) + (i < 0.5).float() + i.clamp(0, 3).float()
    e = torch.where((i != 2) | (m == (x >= 1)), x, c) + torch.where(i <= 0, torch.tensor(-2.0), torch.tensor(3.0))
    return c + d + e


def inputs(batch: int = 5):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, generator=gen) * 2
    return x, torch.rand(batch, 4, generator=gen) > 0.5, torch.randint(-3, 5, (batch, 4), generator=gen)


def test_math_ops_match_hand_written_torch_and_onnxruntime(tmp_path):
    program = tiec.loads(MATH)
    module = program.torch().eval()
    x, m, i = inputs()
    got = module(x, m, i)
    torch.testing.assert_close(got, reference(x, m, i), rtol=1e-5, atol=1e-5)
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=module)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # B stays dynamic
        x, m, i = inputs(batch)
        out = session.run(None, {"x": x.numpy(), "m": m.numpy(), "i": i.numpy()})[0]
        np.testing.assert_allclose(out, module(x, m, i).numpy(), rtol=1e-3, atol=1e-5)


def test_emitted_source_writes_operators_and_literals_as_a_person_would():
    source = tiec.loads(MATH).python()
    assert "gt = x > 0" in source
    assert "torch.where(torch.logical_and(gt, torch.logical_not(m)), a, 0.0)" in source
    assert "b.masked_fill(m, -1000000000)" in source
    assert "torch.clamp(i, min=0, max=3)" in source
    assert "lt.to(torch.float32)" in source


def types(body: str, inputs: str = "in x: f32[B, 4]\n    in i: i64[B, 4]\n    in m: bool[B, 1]") -> str:
    program = tiec.loads(f"model M {{\n    {inputs}\n    y = {body}\n    return y\n}}\n")
    return str(program.ir.types["M"]["y"])


@pytest.mark.parametrize(("body", "want"), [
    ("lt(i, 0.5)", "bool[B, 4]"),
    ("where(m, i, 0.5)", "f32[B, 4]"),        # a float beside an integer tensor: f32, as torch
    ("where(m, i, 2)", "i64[B, 4]"),
    ("where(m, -1e9, 0.0)", "f32[B, 1]"),     # two numbers: their own dtype
    ("pow(i, 2)", "i64[B, 4]"),
    ("clamp(i, max=3)", "i64[B, 4]"),
    ('cast(x, "bf16")', "bf16[B, 4]"),
    ("masked_fill(x, m, 0)", "f32[B, 4]"),
])
def test_result_types_follow_pytorch(body, want):
    assert types(body) == want


@pytest.mark.parametrize(("body", "message"), [
    ("where(x, x, x)", "where: the condition must be bool, got f32"),
    ("where(m, m, m)", "where selects between numbers"),
    ("clamp(x)", "clamp needs min, max or both"),
    ("clamp(x, min=2, max=1)", "clamp: min 2 is above max 1"),
    ("clamp(i, max=0.5)", "clamp of an i64 tensor takes whole-number bounds"),
    ("eq(x, m)", "eq: dtypes differ (f32 and bool)"),
    ("lt(1, 2)", "lt needs at least one tensor operand"),
    ("masked_fill(x, x, 0)", "masked_fill: the mask must be bool, got f32"),
    ('cast(x, "f8")', "cast: 'dtype' must be one of"),
    ("erf(i)", "erf needs a floating-point tensor, got i64"),
])
def test_bad_uses_are_located_errors(body, message):
    with pytest.raises(TieError) as info:
        types(body)
    assert message in str(info.value)
    assert info.value.span.line == 5


def test_a_mask_must_broadcast_to_the_filled_tensor():
    with pytest.raises(TieError, match=r"masked_fill: the mask bool\[2, 1, 4\] must broadcast to the input's shape"):
        types("masked_fill(x, m, 0)", "in x: f32[B, 4]\n    in i: i64[B, 4]\n    in m: bool[2, 1, 4]")
