"""bf16 through ops that opset 18 gives no bfloat16 form (Conv, ConvTranspose, AveragePool,
GlobalAveragePool, Sin, Cos): the export computes them in f32 between two Casts, rounding once as
PyTorch's CPU kernels do, so the file passes the full ONNX checker and keeps bf16 initializers.
onnxruntime's CPU provider runs few bf16 ops (not even Add), so the file is run by ONNX's own
reference evaluator and compared with the module in bf16."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

import tiec

SPEC = """
model M {
    in x: bf16[B, 2, 8, 8]
    c = Conv2d(2, 4, 3, padding=1, dtype="bf16")
    up = ConvTranspose2d(4, 2, 2, stride=2, dtype="bf16")
    y = up(c(x))
    return sin(y) + cos(y) + adaptive_avg_pool2d(y, 1), adaptive_avg_pool2d(y, 4)
}
"""


def test_bf16_conv_pool_and_trigonometry_export_and_match_the_module(tmp_path):
    program = tiec.loads(SPEC)
    module = program.torch(seed=0).eval()
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=module)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    params = [t for t in model.graph.initializer if not t.name.startswith("~")]
    assert params and {t.data_type for t in params} == {onnx.TensorProto.BFLOAT16}  # stored as trained
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        want = [y.float().numpy() for y in module(x)]
    got = ReferenceEvaluator(model).run(None, {"x": x.float().numpy().astype(ml_dtypes.bfloat16)})
    for have, ref in zip(got, want, strict=True):
        assert have.dtype == ml_dtypes.bfloat16
        # both round an f32 result to bf16 once; a summation order apart, they may differ by a bf16 step
        np.testing.assert_allclose(have.astype(np.float32), ref, rtol=2 ** -7, atol=2 ** -7)
