"""`--weights` files and state dicts that hold something other than float tensors.

A checkpoint is a file saved with `torch.save` of a state dict, or a safetensors file. Each bad
entry is reported at the layer whose parameter it was meant for, naming the key and what is wrong
with it; nothing is cast across kinds (an integer, bool or complex tensor is no float weight) and
no tensor without dense values (meta, sparse, quantized) is read. nan and inf are an error unless
the user allows them (`--allow-nonfinite`): a trained model may hold them, but rarely on purpose.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import tiec
from tiec import cli

SPEC = "model M {\n    in x: [B, 4]\n    enc = Linear(4, 3)\n    return relu(enc(x))\n}\n"
LAYER = ("        enc = Linear(4, 3)\n"
         "        ^^^^^^^^^^^^^^^^^^\n")


def _quantized() -> torch.Tensor:
    with warnings.catch_warnings():  # quantized tensors are deprecated, not gone
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(torch.zeros(3, 4), 0.1, 0, torch.qint8)


BAD = {
    "str": ("x", "is not a tensor: got str 'x'", "a state dict maps each parameter name to a torch.Tensor"),
    "int": (3, "is not a tensor: got int 3", "a state dict maps each parameter name to a torch.Tensor"),
    "list": ([[0.0] * 4] * 3, "is not a tensor: got list " + str([[0.0] * 4] * 3),
             "a state dict maps each parameter name to a torch.Tensor"),
    "none": (None, "is not a tensor: got NoneType None", "a state dict maps each parameter name to a torch.Tensor"),
    "sparse": (lambda: torch.zeros(3, 4).to_sparse(), "is a sparse tensor (torch.sparse_coo)",
               "pass it dense: tensor.to_dense()"),
    "meta": (lambda: torch.zeros(3, 4, device="meta"), "is a meta tensor, which has a shape but no values",
             "save the weights after loading or initialising them"),
    "quantized": (_quantized, "is a quantized tensor (torch.qint8)", "pass it dequantized: tensor.dequantize()"),
    "bool": (lambda: torch.ones(3, 4, dtype=torch.bool), "has dtype bool, but the parameter is f32",
             "convert it explicitly (tensor.float()) if these are the values you mean"),
    "int64": (lambda: torch.ones(3, 4, dtype=torch.int64), "has dtype int64, but the parameter is f32",
              "convert it explicitly (tensor.float()) if these are the values you mean"),
    "complex": (lambda: torch.ones(3, 4, dtype=torch.complex64), "has dtype complex64, but the parameter is f32",
                "converting it would drop the imaginary part; pass the real values you mean"),
}


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "m.tie"
    path.write_text(SPEC)
    return path


def _export(spec, weights, capsys) -> str:
    out = spec.parent / "out"
    out.mkdir()
    assert cli.main(["export", str(spec), "-o", str(out / "m.onnx"), "--weights", str(weights)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and list(out.iterdir()) == []  # no file, not even a temporary
    return captured.err


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # torch.load of a quantized tensor
@pytest.mark.parametrize("case", BAD, ids=str)
def test_a_bad_entry_in_a_checkpoint_names_its_key(case, spec, capsys):
    value, message, hint = BAD[case]
    path = spec.parent / "w.pt"
    torch.save({"enc.weight": value() if callable(value) else value, "enc.bias": torch.zeros(3)}, path)
    assert _export(spec, path, capsys) == f"{spec}:3:5: error: weight 'enc.weight' {message}\n{LAYER}    hint: {hint}\n"


def test_the_qualified_key_of_the_all_models_module_is_named(spec):
    program = tiec.load(spec)
    with pytest.raises(tiec.TieError) as info:
        program.weights_for("M", {"M.enc.weight": torch.zeros(3, 4, dtype=torch.int32), "M.enc.bias": torch.zeros(3)})
    assert info.value.message == "weight 'M.enc.weight' has dtype int32, but the parameter is f32"


@pytest.mark.parametrize("value", [[1, 2], torch.zeros(3), 7])
def test_a_checkpoint_that_is_not_a_mapping(value, spec, capsys):
    path = spec.parent / "w.pt"
    torch.save(value, path)
    got = {list: "list [1, 2]", torch.Tensor: "Tensor tensor([0., 0., 0.])", int: "int 7"}[type(value)]
    assert _export(spec, path, capsys) == (
        f"{spec}:1:7: error: {path} does not hold a state dict: got {got}\n"
        "    model M {\n"
        "          ^\n"
        "    hint: save a mapping of parameter names to tensors: torch.save(module.state_dict(), path)\n")


def test_api_weights_that_are_not_a_mapping(spec):
    with pytest.raises(tiec.TieError) as info:
        tiec.load(spec).weights_for("M", [1, 2])
    assert info.value.message == "weights must be a module, a state dict or a saved state dict file: got list [1, 2]"


def test_a_meta_module_is_refused(spec):
    with torch.device("meta"):
        module = tiec.load(spec).torch("M")
    with pytest.raises(tiec.TieError) as info:
        tiec.load(spec).weights_for("M", module)
    assert info.value.message == "weight 'enc.bias' is a meta tensor, which has a shape but no values"
    assert (info.value.span.line, info.value.span.col) == (3, 5)


def test_numpy_arrays_are_checked_the_same_way(spec):
    program = tiec.load(spec)
    with pytest.raises(tiec.TieError) as info:
        program.weights_for("M", {"enc.weight": np.zeros((3, 4), np.complex128), "enc.bias": np.zeros(3, np.float32)})
    assert info.value.message == "weight 'enc.weight' has dtype complex128, but the parameter is f32"
    with pytest.raises(tiec.TieError) as info:
        program.weights_for("M", {"enc.weight": np.ones((3, 4)), "enc.bias": np.zeros(3, np.float32)})
    assert info.value.message == "weight 'enc.weight' has dtype float64, but the parameter is f32"
    arrays = program.weights_for("M", {"enc.weight": np.ones((3, 4), np.float32), "enc.bias": np.zeros(3, np.float32)})
    assert arrays["enc.weight"].dtype == np.float32 and arrays["enc.weight"].sum() == 12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_refused_never_cast(dtype, spec, tmp_path):
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"enc.weight": weight.to(dtype), "enc.bias": torch.zeros(3)}, tmp_path / "w.pt")
    name = str(dtype).removeprefix("torch.")
    for weights in (tmp_path / "w.pt", tiec.load(spec).torch("M").to(dtype)):
        with pytest.raises(tiec.TieError) as info:
            tiec.load(spec).weights_for("M", weights)
        assert info.value.message.endswith(f" has dtype {name}, but the parameter is f32")
        assert info.value.hint == ("convert the weights to float32 first if that is what you mean "
                                   "(module.to(torch.float32), or tensor.to(torch.float32) for one tensor)")


def test_nan_and_inf_weights_are_refused_by_default(spec, capsys):
    weight = torch.zeros(3, 4)
    weight[1, 2], weight[2, 0] = float("inf"), float("nan")
    torch.save({"enc.weight": weight, "enc.bias": torch.zeros(3)}, spec.parent / "w.pt")
    assert _export(spec, spec.parent / "w.pt", capsys) == (
        f"{spec}:3:5: error: weight 'enc.weight' holds 2 non-finite value(s) (inf, nan; the first at [1, 2])\n"
        f"{LAYER}    hint: pass --allow-nonfinite (API: allow_nonfinite=True) to keep them as they are\n")
    with pytest.raises(tiec.TieError, match="weight 'enc.bias' holds 1 non-finite value"):
        tiec.load(spec).weights_for("M", {"enc.weight": np.zeros((3, 4), np.float32),
                                          "enc.bias": np.array([0, -np.inf, 0], np.float32)})


def test_nan_and_inf_weights_are_exported_as_they_are_when_allowed(spec, tmp_path):
    weight = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0]] * 3)
    torch.save({"enc.weight": weight, "enc.bias": torch.zeros(3)}, tmp_path / "w.pt")
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(spec), "-o", str(out), "--weights", str(tmp_path / "w.pt"),
                     "--allow-nonfinite"]) == 0
    import onnx
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert np.array_equal(init["enc.weight"], weight.numpy(), equal_nan=True)


def _safetensors(path, header: dict, data: bytes = b"") -> None:
    import json
    import struct

    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


SAFETENSORS_BAD = {  # header → the error
    "claims 40 GB it does not hold": (
        {"enc.weight": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40_000_000_000]}}, b"",
        "cannot read weights from {path}: Error while deserializing header: incomplete metadata, file not fully covered"),
    "wrong shape, read from the header": (
        {"enc.weight": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]},
         "enc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [48, 60]}}, bytes(60),
        "weight 'enc.weight' has shape [4, 3], the model needs [3, 4]"),
    "an integer tensor": (
        {"enc.weight": {"dtype": "I32", "shape": [3, 4], "data_offsets": [0, 48]},
         "enc.bias": {"dtype": "F32", "shape": [3], "data_offsets": [48, 60]}}, bytes(60),
        "weight 'enc.weight' has dtype int32, but the parameter is f32"),
}


@pytest.mark.parametrize("case", SAFETENSORS_BAD, ids=str)
def test_a_bad_safetensors_file_is_refused_before_its_bytes_are_read(case, spec, capsys):
    header, data, message = SAFETENSORS_BAD[case]
    path = spec.parent / "w.safetensors"
    _safetensors(path, header, data)
    assert f"error: {message.format(path=path)}\n" in _export(spec, path, capsys)


def test_a_huge_safetensors_header_is_refused(spec, capsys):
    path = spec.parent / "w.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    assert "Error while deserializing header: header too large" in _export(spec, path, capsys)


def test_keys_and_metadata_of_a_file_never_reach_the_output(spec, tmp_path):
    program = tiec.load(spec)
    module = program.torch(seed=1)
    hostile = "x'); import os; os.system('echo owned') #"
    state = {k: v.detach() for k, v in module.state_dict().items()}
    import safetensors.torch

    safetensors.torch.save_file({**state, hostile: torch.zeros(1)}, tmp_path / "w.safetensors",
                                metadata={"format": "pt", "enc.weight": hostile, "tiec.groups": hostile})
    program.onnx(tmp_path / "direct.onnx", weights=module)
    program.onnx(tmp_path / "file.onnx", weights=tmp_path / "w.safetensors")
    assert (tmp_path / "file.onnx").read_bytes() == (tmp_path / "direct.onnx").read_bytes()
    assert b"owned" not in (tmp_path / "file.onnx").read_bytes()
