"""Number functions in configuration expressions (`log`, `exp`, `sqrt`, `pow` of numbers): values
are Python's `math` results, sizes built from them follow a parameter through the emitted
constructor, the same names on tensors stay ops, and domain errors are located."""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiec.dsl.diagnostics import TieError

import tiec
from tests.emitted import load_emitted

SPEC = """
model M(d = 16, max_distance = 20) {
    in x: [B, d]
    up = Linear(d, sqrt(d) * 2)                 # 16 → 8: an integer-valued float sizes a layer
    ratio = log(max_distance / 8)               # a number, folded while compiling
    return exp(up(x)) / ratio * pow(d, -0.5) + log(abs(up(x)) + 1)
}
"""


def _emitted(program, tmp_path):
    return load_emitted(program.python(), tmp_path, "emitted")


def test_number_functions_fold_to_pythons_values_and_tensor_calls_stay_ops(tmp_path):
    program = tiec.loads(SPEC)
    module = program.torch().eval()
    assert module.up.weight.shape == (8, 16)
    source = program.python()
    assert repr(math.log(20 / 8)) in source and repr(16 ** -0.5) in source  # Python's own doubles
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = module.up(x)
        want = h.exp() / math.log(20 / 8) * 16 ** -0.5 + (h.abs() + 1).log()
        got = module(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    path = tmp_path / "m.onnx"
    program.onnx(path, weights=module)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(out, got.numpy(), rtol=1e-3, atol=1e-5)


def test_a_size_from_a_function_follows_the_parameter_in_the_emitted_constructor(tmp_path):
    emitted = _emitted(tiec.loads("model M(d = 16) {\n in x: [B, d]\n up = Linear(d, sqrt(d))\n return up(x)\n}\n"),
                       tmp_path)
    assert emitted.M().up.weight.shape == (4, 16)
    assert emitted.M(d=64).up.weight.shape == (8, 64)  # `int(math.sqrt(d))`, not a baked 4


@pytest.mark.parametrize(("expr", "message"), [
    ("log(0)", "log(0) is not a real number"),
    ("sqrt(-4)", "sqrt(-4) is not a real number"),
    ("pow(0, -1)", "pow(0, -1) is not a real number"),
    ("exp(1000)", "'exp' gives inf: configuration values must be finite numbers"),
    ("pow(2)", "'pow' of numbers takes 2 argument(s), got 1"),
    ('log("a")', "'log' needs numbers here"),
])
def test_a_function_outside_its_domain_is_an_error_at_the_call(expr, message):
    with pytest.raises(TieError) as err:
        tiec.loads(f"model M {{\n    in x: [B, 4]\n    fc = Linear(4, 4 + 0 * {expr})\n    return fc(x)\n}}\n")
    assert err.value.span.line == 3 and err.value.span.col == 28
    assert message in str(err.value)
