"""Products with a 1-D operand read the same in onnxruntime at every optimization level.

onnxruntime 1.32 fuses Transpose + MatMul into FusedMatMul at EXTENDED and ALL, and computes
`transpose(h, 1, 2) @ v` wrongly for a 1-D `v` (a difference of about 1.4 on unit-scale inputs);
the export makes such products 2-D around the MatMul."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import tiec

SPEC = """
model M {
    in h: f32[B, 3, 4]
    w = Linear(4, 4)
    v = Linear(1, 3)
    u = Linear(1, 4)
    right = transpose(w(h), 1, 2) @ v.bias
    left = u.bias @ transpose(w(h), 1, 2)
    return right, left
}
"""

LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


@pytest.mark.parametrize("level", LEVELS, ids=lambda lv: lv.name)
def test_a_transposed_value_times_a_vector(tmp_path, level):
    program = tiec.loads(SPEC)
    module = program.torch(seed=3).eval()
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=module)
    h = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = module.w(h).transpose(1, 2)
        want = (t @ module.v.bias, module.u.bias @ t)  # written by hand
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    got = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"h": h.numpy()})
    for have, ref in zip(got, want, strict=True):
        np.testing.assert_allclose(have, ref.numpy(), rtol=1e-3, atol=1e-5)
