"""Parameter dtypes: per layer (`dtype="bf16"`) or for the whole program (`dtype=` / `--dtype`),
mixed dtypes promoted as PyTorch does, and the ONNX file carrying the real dtype."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tiec

MIXED = """
model M {
    in x: [B, 4]
    in t: i64[B]
    h = Linear(4, 8, dtype="bf16")
    e = Embedding(10, 8)
    y = h(cast(x, "bf16")) + e(t)
    return y
}
"""


def test_a_layer_holds_its_own_dtype_and_mixed_values_promote_as_torch():
    program = tiec.loads(MIXED)
    module = program.torch().eval()
    assert module.h.weight.dtype == torch.bfloat16 and module.e.weight.dtype == torch.float32
    assert str(program.ir.types["M"]["y"]) == "f32[B, 8]"
    x, t = torch.randn(3, 4), torch.tensor([1, 0, 9])
    want = torch.nn.functional.linear(x.bfloat16(), module.h.weight, module.h.bias) + module.e.weight[t]
    got = module(x, t)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert "nn.Linear(4, 8, dtype=torch.bfloat16)" in program.python()


@pytest.mark.parametrize(("a", "b"), [("f16", "f32"), ("f16", "bf16"), ("i64", "f16"), ("i32", "i64"),
                                      ("bf16", "f64"), ("i64", "bf16")])
def test_promotion_matches_torch_result_type(a, b):
    program = tiec.loads(f"model M {{\n    in a: {a}[2, 3]\n    in b: {b}[2, 3]\n    y = a * b\n    return y\n}}\n")
    names = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64,
             "i32": torch.int32, "i64": torch.int64}
    want = torch.result_type(torch.ones(2, 3, dtype=names[a]), torch.ones(2, 3, dtype=names[b]))
    got = program.ir.types["M"]["y"].dtype
    assert names[got] == want


def test_program_dtype_makes_every_parameter_and_float_input_that_dtype(tmp_path):
    program = tiec.load("examples/tied_autoencoder.tie", dtype="f64")
    module = program.torch().eval()
    assert {p.dtype for p in module.parameters()} == {torch.float64}
    path = tmp_path / "ae.onnx"
    program.onnx(path, weights=module)
    model = onnx.load(path)
    assert {i.data_type for i in model.graph.initializer if not i.name.startswith("~")} == {onnx.TensorProto.DOUBLE}
    name = model.graph.input[0].name
    x = torch.randn(3, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:], dtype=torch.float64)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x.numpy()})[0]
    want = module(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_cli_dtype_flag(tmp_path, capsys):
    from tiec import cli

    out = tmp_path / "m.py"
    assert cli.main(["compile", "examples/tied_lm.tie", "--dtype", "bf16", "-o", str(out)]) == 0
    assert "dtype=torch.bfloat16" in out.read_text()
    with pytest.raises(SystemExit) as info:  # a usage error
        cli.main(["check", "examples/tied_lm.tie", "--dtype", "f8"])
    assert info.value.code == 2


def test_a_layer_dtype_must_be_a_float_dtype():
    with pytest.raises(tiec.TieError, match="'dtype' must be one of"):
        tiec.loads('model M {\n    in x: [B, 4]\n    h = Linear(4, 4, dtype="i64")\n    return h(x)\n}\n')


def test_export_dtype_converts_the_weights_only_when_asked(tmp_path, capsys):
    from onnx import numpy_helper

    from tiec import cli

    program = tiec.load("examples/tied_autoencoder.tie")
    module = program.torch(seed=4)
    weights = tmp_path / "w32.safetensors"
    program.save(module, weights)
    out = tmp_path / "h.onnx"
    assert cli.main(["export", "examples/tied_autoencoder.tie", "--dtype", "f16", "--weights", str(weights),
                     "-o", str(out)]) == 0
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer if not i.name.startswith("~")}
    assert stored["enc.weight"].dtype == np.float16
    np.testing.assert_array_equal(stored["enc.weight"], module.enc.weight.detach().half().numpy())
    half = tiec.load("examples/tied_autoencoder.tie", dtype="f16")
    with pytest.raises(tiec.TieError, match="has dtype float32, but the parameter is f16"):
        half.onnx(tmp_path / "no.onnx", weights=module)  # the API converts only with convert=True
    assert not (tmp_path / "no.onnx").exists()
    half.onnx(tmp_path / "yes.onnx", weights=module, convert=True)
