"""`tiec dedup`: copies and transposed copies merged in ONNX files from other exporters.

References: a hand-written PyTorch GPT-2 (tests/references.py) exported by TorchScript, whose
tied head is stored twice; hand-built graphs whose outputs numpy computes; onnxruntime on the
file before the merge; onnxsim and onnxoptimizer run on the result (they must not undo it).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from tiec.backends.onnx import dedup

from tests.references import GPT2
from tiec import cli

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8, **kw)


def _run(path, feeds) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def _initializer_bytes(path) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


@pytest.fixture
def gpt2_file(tmp_path):
    torch.manual_seed(0)
    ref = GPT2(vocab=300, context=16, d=32, heads=2, layers=2).eval()
    tokens = torch.randint(0, 300, (2, 8))
    path = tmp_path / "gpt2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        torch.onnx.export(ref, (tokens,), str(path), dynamo=False, opset_version=18, input_names=["tokens"])
    unique = sum(p.numel() * p.element_size() for p in ref.parameters())  # a tied parameter counts once
    return path, ref, tokens, unique


def test_torchscripts_second_copy_of_the_tied_head_is_merged(gpt2_file, tmp_path, capsys):
    path, ref, tokens, unique = gpt2_file
    wte = ref.wte.weight.detach().numpy()
    stored = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    assert any(np.array_equal(a, wte.T) for a in stored)  # TorchScript stores wte and wte.T
    out = tmp_path / "dedup.onnx"
    assert cli.main(["dedup", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "= wte.weight.T (38,400 bytes)" in printed and f"wrote {out}" in printed
    assert _initializer_bytes(out) <= _initializer_bytes(path) - wte.nbytes + 64  # + the Gemm form's shape constants
    assert _initializer_bytes(out) <= unique * 1.001
    got = _run(out, {"tokens": tokens.numpy()})[0]
    with torch.no_grad():
        want = ref(tokens).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    manifest = json.loads(onnx.load(str(out)).metadata_props[-1].value)
    (group,) = manifest["share_groups"]
    assert group["initializer"] == "wte.weight" and group["members"][1]["transposed"] is True


def test_the_merged_file_survives_every_tool(gpt2_file, tmp_path):
    import onnxoptimizer
    import onnxsim
    import onnxslim

    path, _, _, unique = gpt2_file
    out = tmp_path / "dedup.onnx"
    dedup.dedup_file(path, out)
    simplified, ok = onnxsim.simplify(onnx.load(str(out)))
    assert ok
    tools = {"onnxsim": simplified, "onnxslim": onnxslim.slim(onnx.load(str(out))),
             "onnxoptimizer": onnxoptimizer.optimize(onnx.load(str(out)))}
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.optimized_model_filepath = str(tmp_path / f"ort{int(level)}.onnx")
        ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        tools[f"onnxruntime {level}"] = onnx.load(options.optimized_model_filepath)
    for tool, model in tools.items():
        stored = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
        assert stored <= unique * 1.001, tool


def test_byte_equal_copies_are_renamed():
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    model = _model([helper.make_node("Add", ["x", "a"], ["s"]), helper.make_node("Mul", ["s", "b"], ["y"])],
                   [("x", [3, 4])], [("y", [3, 4])], {"a": w, "b": w.copy()})
    alias = dedup.plan(model)
    assert alias == {"b": ("a", False)}
    merges = dedup.rewrite(model, alias)
    assert merges == [dedup.Merge("a", "b", False, 48)] and [t.name for t in model.graph.initializer] == ["a"]
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, (x + w) * w, rtol=1e-6)


CASES = {  # a reader of the copy "t" → (input shape, output shape, the numpy result from x and t)
    "Gemm transB": (lambda: helper.make_node("Gemm", ["x", "t"], ["y"], transB=1), (5, 4), (5, 3), lambda x, t: x @ t.T),
    "Gemm": (lambda: helper.make_node("Gemm", ["x", "t"], ["y"]), (5, 4), (5, 3), lambda x, t: x @ t),
    "MatMul 2-D": (lambda: helper.make_node("MatMul", ["x", "t"], ["y"]), (5, 4), (5, 3), lambda x, t: x @ t),
    "MatMul 3-D": (lambda: helper.make_node("MatMul", ["x", "t"], ["y"]), (2, 5, 4), (2, 5, 3), lambda x, t: x @ t),
    "MatMul 1-D": (lambda: helper.make_node("MatMul", ["x", "t"], ["y"]), (4,), (3,), lambda x, t: x @ t),
    "MatMul left": (lambda: helper.make_node("MatMul", ["t", "x"], ["y"]), (3, 2), (4, 2), lambda x, t: t @ x),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_transposed_copy_is_read_in_the_kept_orientation(case, tmp_path):
    make, x_shape, y_shape, numpy_fn = CASES[case]
    t = RNG.standard_normal((3, 4) if case == "Gemm transB" else (4, 3)).astype(np.float32)
    keep = t.T.copy()  # "w", first in the file and read by a Gather, is the one that stays
    nodes = [make(), helper.make_node("Gather", ["w", "i"], ["g"])]
    model = _model(nodes, [("x", list(x_shape))], [("y", list(y_shape)), ("g", [1, keep.shape[1]])],
                   {"w": keep, "t": t})
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "i"))
    path, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(path))
    report = dedup.dedup_file(path, out)
    assert [(m.kept, m.removed, m.transposed) for m in report["merges"]] == [("w", "t", True)]
    merged = onnx.load(str(out))
    assert "Transpose" not in {n.op_type for n in merged.graph.node}
    assert sorted(t.name for t in merged.graph.initializer if not t.name.startswith("~")) == ["i", "w"]
    x = RNG.standard_normal(x_shape).astype(np.float32)
    np.testing.assert_allclose(_run(out, {"x": x})[0], numpy_fn(x, t), rtol=1e-5, atol=1e-6)


def test_the_copy_is_kept_when_only_the_other_can_move():
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    # the first initializer ("t", read by Gather) must stay; the later "w", read by Gemm, goes
    model = _model([helper.make_node("Gather", ["t", "i"], ["g"]), helper.make_node("Gemm", ["x", "w"], ["y"])],
                   [("x", [2, 3]), ("i", [1])], [("g", [1, 3]), ("y", [2, 4])], {"t": w.T.copy(), "w": w})
    assert dedup.plan(model) == {"w": ("t", True)}


def test_a_copy_read_by_other_ops_is_not_merged():
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    model = _model([helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Add", ["z", "t"], ["b"])],
                   [("x", [3, 4]), ("z", [4, 3])], [("a", [3, 4]), ("b", [4, 3])], {"w": w, "t": w.T.copy()})
    assert dedup.plan(model) == {}


def test_an_initializer_that_is_a_graph_input_is_never_merged():
    w = np.ones((2, 2), np.float32)
    model = _model([helper.make_node("Add", ["a", "b"], ["y"])], [("b", [2, 2])], [("y", [2, 2])], {"a": w, "b": w.copy()})
    assert dedup.plan(model) == {}


def test_an_unverified_merge_writes_nothing(tmp_path, monkeypatch, capsys):
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    model = _model([helper.make_node("Add", ["x", "a"], ["s"]), helper.make_node("Mul", ["s", "b"], ["y"])],
                   [("x", [3, 4])], [("y", [3, 4])], {"a": w, "b": w + 1})
    onnx.save(model, str(tmp_path / "in.onnx"))
    monkeypatch.setattr(dedup, "plan", lambda *_: {"b": ("a", False)})  # a wrong merge must be caught
    assert cli.main(["dedup", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path / 'in.onnx'}: error: cannot dedup {tmp_path / 'in.onnx'}: output 'y' changed")
    assert not (tmp_path / "out.onnx").exists()


def test_existing_metadata_and_manifest_are_kept(tmp_path):
    w = np.ones((2, 2), np.float32)
    old = {"model": "m", "share_groups": [{"id": 4, "initializer": "b", "members": []}], "tie_groups": [{"id": 1}]}
    model = _model([helper.make_node("Add", ["x", "a"], ["s"]), helper.make_node("Add", ["s", "b"], ["y"])],
                   [("x", [2, 2])], [("y", [2, 2])], {"a": w, "b": w.copy()})
    helper.set_model_props(model, {"tiec.groups": json.dumps(old), "author": "someone"})
    onnx.save(model, str(tmp_path / "in.onnx"))
    dedup.dedup_file(tmp_path / "in.onnx", tmp_path / "out.onnx")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "out.onnx")).metadata_props}
    manifest = json.loads(props["tiec.groups"])
    assert props["author"] == "someone" and manifest["tie_groups"] == [{"id": 1}]
    assert manifest["share_groups"][1] == {  # "b", named in the manifest, is the one kept
        "id": 5, "initializer": "b", "source": "dedup",
        "members": [{"param": "b", "transposed": False}, {"param": "a", "transposed": False}]}


@pytest.mark.parametrize("content", [b"", b"not onnx at all", b"\x08\x07" * 10])
def test_a_file_that_is_not_onnx_is_an_error(content, tmp_path, capsys):
    (tmp_path / "in.onnx").write_bytes(content)
    assert cli.main(["dedup", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx")]) == 1
    assert "error: cannot dedup" in capsys.readouterr().err and not (tmp_path / "out.onnx").exists()


def test_external_data_outside_the_folder_is_refused(tmp_path, capsys):
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [("x", [2, 2])], [("y", [2, 2])],
                   {"w": np.ones((2, 2), np.float32)})
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../etc/passwd")
    onnx.save(model, str(tmp_path / "in.onnx"))
    assert cli.main(["dedup", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx")]) == 1
    assert "points outside the directory" in capsys.readouterr().err


def test_names_with_control_characters_are_printed_escaped(tmp_path, capsys):
    w = np.ones((2, 2), np.float32)
    model = _model([helper.make_node("Add", ["x", "a"], ["s"]), helper.make_node("Add", ["s", "b\x1b[31m"], ["y"])],
                   [("x", [2, 2])], [("y", [2, 2])], {"a": w, "b\x1b[31m": w.copy()})
    onnx.save(model, str(tmp_path / "in.onnx"))
    assert cli.main(["dedup", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "'b\\x1b[31m' = a" in out


def test_a_malformed_tensor_is_left_alone_and_the_checker_refuses_the_file(tmp_path, capsys):
    w = np.ones((2, 2), np.float32)
    model = _model([helper.make_node("Add", ["x", "a"], ["s"]), helper.make_node("Add", ["s", "b"], ["y"])],
                   [("x", [2, 2])], [("y", [2, 2])], {"a": w, "b": w.copy()})
    model.graph.initializer[1].raw_data = b"\0" * 12  # 3 floats for a 2 x 2 tensor
    assert dedup.plan(model) == {}
    onnx.save(model, str(tmp_path / "in.onnx"))
    assert cli.main(["dedup", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx")]) == 1
    assert "is too small for the declared shape" in capsys.readouterr().err and not (tmp_path / "out.onnx").exists()


@pytest.fixture
def dynamic_gpt2(tmp_path):
    """A TorchScript export whose inputs are symbolic but whose traced Reshapes fix batch 2 and length 8."""
    torch.manual_seed(0)
    ref = GPT2(vocab=100, context=16, d=16, heads=2, layers=1).eval()
    path = tmp_path / "dynamic.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ref, (torch.randint(0, 100, (2, 8)),), str(path), dynamo=False, opset_version=18,
                          input_names=["tokens"], dynamic_axes={"tokens": {0: "B", 1: "T"}})
    return path


def test_a_graph_that_fixes_a_symbolic_dim_needs_dim(dynamic_gpt2, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert cli.main(["dedup", str(dynamic_gpt2), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime cannot run it on random inputs" in err and "hint: if the graph fixes a size" in err
    assert not out.exists()
    assert cli.main(["dedup", str(dynamic_gpt2), "-o", str(out), "--dim", "B=2", "--dim", "T=8"]) == 0
    assert "= wte.weight.T" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["B", "B=0", "B=x", "B=2000000"])
def test_dim_must_be_a_named_size_in_range(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["dedup", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx"), "--dim", bad])
    assert info.value.code == 2 and "expected NAME=N with 1 <= N <= 1048576" in capsys.readouterr().err


def test_random_inputs_are_bounded_before_allocating(tmp_path, capsys):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [100_000, 100_000])], [("y", [100_000, 100_000])],
                   {"w": np.ones((2, 2), np.float32), "v": np.ones((2, 2), np.float32)})
    onnx.save(model, str(tmp_path / "in.onnx"))
    assert cli.main(["dedup", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx")]) == 1
    assert "need more than 67,108,864 random values, the limit for the check" in capsys.readouterr().err
