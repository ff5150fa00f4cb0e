"""`tiec export --quantize int8`: weight-only int8 that keeps ties.

Each example is exported in float and in int8. onnxruntime runs the int8 file
and must give (a) the hand-written PyTorch reference's outputs for the dequantized weights
(`q · scale`, computed here from the file's int8 tensors) to the usual fp32 tolerance, and (b) the
float outputs to within the documented tolerance: max |int8 − fp32| ≤ 3 % of max |fp32|, for the
fresh weights of PyTorch's initialisation. Each
share group is one int8 tensor, every matrix is quantized, and the file is at most 1.01 × its
int8 bytes and scales.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import tiec
from tests.test_examples import CASES, EX, Case, flat, toks
from tiec import cli

TOLERANCE = 0.03  # of the float output's largest magnitude (docs/cli.md); the examples reach 0.1–1.5 %
QUANTIZE = [c for c in CASES if c.model in {"TiedLM", "TiedLMExplicit", "TiedAutoencoder", "Autoencoder", "Siamese",
                                               "GPT2Small", "Albert", "DeepShared", "TaskA"}]


def compiled(case: Case):
    """(program, module with its fresh weights: PyTorch's initialisation, as a model starts training)."""
    program = tiec.load(EX / f"{case.spec}.tie", overrides=case.overrides or None)
    return program, program.torch(model=case.model, seed=0).eval()


def run(path, args) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]


def dequantized(path) -> dict[str, np.ndarray]:
    """Parameter → q · scale[row], from the int8 file's tensors."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    out = {}
    for name, q in inits.items():
        if name.endswith(":int8"):
            base = name.removesuffix(":int8")
            scale = inits[base + ":scale"]
            out[base] = q.astype(np.float32) * scale.reshape((-1,) + (1,) * (q.ndim - 1))
    return out


@pytest.mark.parametrize("case", QUANTIZE, ids=[c.id for c in QUANTIZE])
def test_int8_file_keeps_ties_and_stays_close_to_float(case, tmp_path):
    program, module = compiled(case)
    info = program.onnx(tmp_path / "q.onnx", case.model, weights=module, quantize="int8")
    proto = onnx.load(str(tmp_path / "q.onnx"))
    arrays = program.weights_for(case.model, module)
    matrices = sorted(n for n, a in arrays.items() if a.ndim >= 2)
    int8 = sorted(t.name.removesuffix(":int8") for t in proto.graph.initializer
                  if t.data_type == onnx.TensorProto.INT8)
    assert int8 == matrices  # one int8 tensor per group's matrix, none twice, none left in float
    assert not [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2]
    assert [n.op_type for n in proto.graph.node].count("DequantizeLinear") == len(matrices)
    assert info["initializers"] == len(arrays) and sorted(info["quantized"]["tensors"]) == matrices

    # (a) exactly the reference with the dequantized weights
    reference = case.reference().eval()
    deq = dequantized(tmp_path / "q.onnx")

    def as_quantized(value: torch.Tensor) -> torch.Tensor:
        """A member's tensor → its group's dequantized tensor, in the member's orientation."""
        for canonical, w in deq.items():
            if value.shape == w.shape and torch.equal(value, torch.from_numpy(arrays[canonical])):
                return torch.from_numpy(w)
            if value.shape == w.T.shape and torch.equal(value, torch.from_numpy(arrays[canonical].T)):
                return torch.from_numpy(np.ascontiguousarray(w.T))
        return value

    reference.load_state_dict({k: as_quantized(v) for k, v in module.state_dict().items()}, strict=True)
    torch.manual_seed(1)
    args = case.inputs(3)
    got = run(tmp_path / "q.onnx", args)
    with torch.no_grad():
        np.testing.assert_allclose(got, reference(*args).numpy(), rtol=1e-3, atol=1e-5)

    # (b) close to the float model
    reference.load_state_dict(module.state_dict(), strict=True)
    with torch.no_grad():
        want = reference(*args).numpy()
    assert np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()


@pytest.mark.parametrize("case", [
    Case("tied_lm", "TiedLM", None, toks(16000), {"vocab": 16000, "d": 256}),
    Case("tied_lm", "TiedLMExplicit", None, toks(16000), {"vocab": 16000, "d": 256}),
    Case("tied_autoencoder", "TiedAutoencoder", None, flat),
], ids=["TiedLM", "TiedLMExplicit", "TiedAutoencoder"])
def test_int8_file_is_its_int8_bytes_and_scales(case, tmp_path):
    program, module = compiled(case)
    info = program.onnx(tmp_path / "q.onnx", case.model, weights=module, quantize="int8")
    q = info["quantized"]
    assert info["bytes"] <= 1.01 * (q["int8_bytes"] + q["scale_bytes"] + q["float_bytes_kept"])
    float_matrices = info["param_bytes"] - q["float_bytes_kept"]
    assert q["int8_bytes"] * 4 == float_matrices  # every matrix quantized, once


def test_cli_reports_the_quantized_sizes(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(EX / "tied_autoencoder.tie"), "-o", str(out), "--quantize", "int8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"wrote {out}: ") and lines[0].endswith(" bytes, 3 initializers")
    assert lines[1].startswith("int8: 1 weight matrix, 201,728 bytes with their scales (float32: 802,816)")


def test_non_finite_weights_are_not_quantized(tmp_path):
    program, module = compiled(Case("tied_autoencoder", "TiedAutoencoder", None, flat))
    with torch.no_grad():
        module.enc.weight[0, 0] = float("nan")
    with pytest.raises(tiec.TieError) as info:
        program.onnx(tmp_path / "m.onnx", weights=module, quantize="int8", allow_nonfinite=True)
    assert info.value.message == "cannot quantize weight 'enc.weight': it holds non-finite values (nan or inf)"
    assert not (tmp_path / "m.onnx").exists()
