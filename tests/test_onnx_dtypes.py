"""ONNX export in the parameters' own dtype (`load(dtype=…)`), against PyTorch in that dtype.

Every example compiled in f16 and f64 is exported from its module and run by onnxruntime; the
outputs match the module's in the same dtype. Tolerances fit the dtype: f16 to 5e-3 of the output's
largest magnitude (a few half-precision steps: onnxruntime and PyTorch accumulate in different
orders), f64 to rtol 1e-9 / atol 1e-9. Examples whose ops onnxruntime's CPU provider lacks in f64
(`gelu`'s Erf; Conv) are refused before writing (gelu) or left out. bf16 files hold the module's
exact bits (onnxruntime's CPU provider runs few bf16 ops, so they are not run). int8 quantization
takes f32 weights only.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tiec
from tests.test_examples import CASES, EX

TORCH = {"f16": torch.float16, "f64": torch.float64, "bf16": torch.bfloat16}
NO_F64 = {"siamese", "deep_shared", "albert", "bert"}  # Conv, or gelu's Erf: no f64 kernel in onnxruntime


def compiled(case, dtype: str):
    program = tiec.load(EX / f"{case.spec}.tie", case.overrides or None, dtype=dtype)
    return program, program.torch(case.model).eval()


@pytest.mark.parametrize("dtype", ["f16", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_onnxruntime_matches_torch_in_the_parameters_dtype(case, dtype, tmp_path):
    if dtype == "f64" and case.spec in NO_F64:  # the checker says so before anything is written
        with pytest.raises(tiec.TieError, match="no f64 kernel in onnxruntime"):
            compiled(case, dtype)
        return
    program, module = compiled(case, dtype)
    path = tmp_path / "m.onnx"
    program.onnx(path, case.model, weights=module)
    want_type = {"f16": onnx.TensorProto.FLOAT16, "f64": onnx.TensorProto.DOUBLE}[dtype]
    assert {t.data_type for t in onnx.load(str(path)).graph.initializer if not t.name.startswith("~")} == {want_type}
    torch.manual_seed(0)
    args = [a.to(TORCH[dtype]) if a.is_floating_point() else a for a in case.inputs(3)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]
    with torch.no_grad():
        want = module(*args).numpy()
    assert got.dtype == want.dtype
    if dtype == "f16":
        assert np.abs(got.astype(np.float64) - want).max() <= 5e-3 * np.abs(want.astype(np.float64)).max()
    else:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_a_bf16_file_holds_the_modules_bits(tmp_path):
    program, module = compiled(next(c for c in CASES if c.model == "TiedAutoencoder"), "bf16")
    program.onnx(tmp_path / "m.onnx", weights=module)
    inits = {t.name: t for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    t = inits["enc.weight"]
    assert t.data_type == onnx.TensorProto.BFLOAT16
    bits = np.frombuffer(t.raw_data, np.int16).reshape(tuple(t.dims))
    assert np.array_equal(bits, module.enc.weight.detach().view(torch.int16).numpy())


def test_int8_quantization_takes_f32_weights(tmp_path):
    program, module = compiled(next(c for c in CASES if c.model == "TiedAutoencoder"), "f16")
    with pytest.raises(tiec.TieError) as info:
        program.onnx(tmp_path / "m.onnx", weights=module, quantize="int8")
    assert info.value.message == "--quantize int8 takes f32 weights: 'enc.weight' is f16"
    assert not (tmp_path / "m.onnx").exists()
