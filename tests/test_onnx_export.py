"""ONNX export as a file: the manifest, output naming, determinism, atomic writes, size overhead."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from tiec.backends.onnx import export
from tiec.compiler import ir as tir
from tiec.dsl.diagnostics import Source, Span, TieError

from tests.onnx_ir import (
    S,
    attention_stack,
    close,
    exported,
    floats,
    graph,
    init_names,
    layer,
    mlp,
    n,
    program,
    random_weights,
    run,
    share,
    slot,
)


def test_manifest_records_shares_and_ties_of_the_model(tmp_path):
    g = graph("M", {"x": "f32[B, 8]"}, [layer(f"fc{i}", "Linear", in_features=8, out_features=8, bias=True)
                                        for i in (1, 2, 3)],
              [n("Linear", "h1", "x", layer="fc1"), n("Linear", "h2", "h1", layer="fc2"),
               n("Linear", "y", "h2", layer="fc3")], ["y"])
    other = graph("N", {"x": "f32[B, 8]"}, [layer("fc", "Linear", in_features=8, out_features=8, bias=True)],
                  [n("Linear", "y", "x", layer="fc")], ["y"])
    shares = [share(0, ("N.fc.weight", False), ("M.fc3.weight", True), ("M.fc1.weight", False)),
              share(1, ("N.fc.bias", False), ("M.fc2.bias", False))]  # only one member here: not a group in M
    ties = [tir.TieGroup(2, 0.01, "l2", (tir.Member("M.fc1.bias", False, S), tir.Member("M.fc2.bias", False, S)), S),
            tir.TieGroup(4, 0.5, "l1", (tir.Member("M.fc2.weight", False, S), tir.Member("N.fc.weight", True, S)), S)]
    v = "f32[B, 8]"
    ir = program(g, {"h1": v, "h2": v, "y": v}, shares, ties, others=[other])
    w = random_weights(ir)
    path, proto, _ = exported(tmp_path, ir, w)
    assert sorted(init_names(proto)) == ["fc1.bias", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["tiec.groups"]) == {
        "model": "M",
        "share_groups": [{"id": 0, "initializer": "fc3.weight", "members": [
            {"param": "fc3.weight", "transposed": False}, {"param": "fc1.weight", "transposed": True}]}],
        "tie_groups": [{"id": 2, "lambda": 0.01, "norm": "l2", "members": [
            {"param": "fc1.bias", "transposed": False}, {"param": "fc2.bias", "transposed": False}]}],
    }
    x = floats(np.random.default_rng(8), 3, 8)

    def fc(i, h):
        return F.linear(h, slot(ir, w, f"fc{i}.weight"), slot(ir, w, f"fc{i}.bias"))

    close(run(path, {"x": x})[0], fc(3, fc(2, fc(1, torch.from_numpy(x)))))


def test_outputs_renamed_aliased_and_repeated(tmp_path):
    g = graph("M", {"x": "f32[B, 4]"}, [layer("drop", "Dropout", p=0.1)],
              [n("Dropout", "d", "x", layer="drop"), n("relu", "out", "d"), n("tanh", "t", "d")],
              [("out", "t"), ("d", "d"), ("r", "out"), ("r2", "out")])
    ir = program(g, {"d": "f32[B, 4]", "out": "f32[B, 4]", "t": "f32[B, 4]"})
    path, proto, _ = exported(tmp_path, ir, {})
    assert [o.name for o in proto.graph.output] == ["out", "d", "r", "r2"]
    x = floats(np.random.default_rng(9), 2, 4)
    t, d, r, r2 = run(path, {"x": x})
    X = torch.from_numpy(x)
    close(t, torch.tanh(X)), close(d, X), close(r, F.relu(X)), close(r2, F.relu(X))


def test_export_is_deterministic(tmp_path):
    ir = attention_stack(True, True, depth=2)
    w = random_weights(ir)
    a, _, _ = exported(tmp_path, ir, w, name="a.onnx")
    b, _, _ = exported(tmp_path, ir, dict(reversed(list(w.items()))), name="b.onnx")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    ir = mlp()
    w = random_weights(ir)
    del w["fc2.bias"]
    with pytest.raises(KeyError, match="fc2.bias"):
        export(ir, "M", str(tmp_path / "m.onnx"), w)
    w = random_weights(ir)
    w["fc1.weight"] = w["fc1.weight"].T
    with pytest.raises(ValueError, match="fc1.weight"):
        export(ir, "M", str(tmp_path / "m.onnx"), w)
    assert os.listdir(tmp_path) == []

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(TieError, match="cannot write .*m.onnx: disk full"):
        export(ir, "M", str(tmp_path / "m.onnx"), random_weights(ir))
    assert os.listdir(tmp_path) == []


def test_rank_needed_without_types_is_a_tie_error(tmp_path):
    g = graph("M", {"x": "f32[B, 4, 2]"}, [], [n("transpose", "y", "x", dim0=1, dim1=2)], ["y"])
    ir = tir.ProgramIR(Source("<test>", ""), tir.frozen({"M": g}))
    with pytest.raises(TieError, match="rank of 'x'"):
        export(ir, "M", str(tmp_path / "m.onnx"), {})
    assert os.listdir(tmp_path) == []


def test_attention_stack_file_overhead_is_small(tmp_path):
    ir = attention_stack(True, True, depth=4, d=64, heads=4)
    _, proto, info = exported(tmp_path, ir, random_weights(ir))
    assert len([t for t in proto.graph.initializer if t.name.startswith("~")]) < 10  # constants shared
    assert info["overhead"] < 4096


def test_checker_rejection_is_a_tie_error_at_the_node(tmp_path):
    src = Source("bad.tie", "model M {\n    in x: [B, 2]\n    return cat([x, i], dim=1)\n}\n")
    at = Span(src, 3, 12, 3, 30)
    concat = tir.Node("concat", "c", ("x", "i"), tir.frozen({"dim": 1}), at)  # f32 with i64: no ONNX Concat
    g = graph("M", {"x": "f32[B, 2]", "i": "i64[B, 2]"}, [], [concat], ["c"])
    with pytest.raises(TieError) as err:
        export(program(g, {"c": "f32[B, 4]"}), "M", str(tmp_path / "m.onnx"), {})
    assert err.value.span == at and "node 'c' (concat)" in err.value.message and "Concat" in err.value.message
    assert "bad.tie:3:12: error: ONNX export of model M" in err.value.render()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("error, blamed", [
    (onnx.checker.ValidationError("Field 'shape' of 'type' is required but missing."), "model M"),
    (onnx.shape_inference.InferenceError("[TypeInferenceError] input 'h' has the wrong type"), "node 'h' (Linear)"),
    (onnx.checker.ValidationError("Bad tensor 'fc2.bias'"), "parameter 'fc2.bias'"),
])
def test_any_checker_error_becomes_a_tie_error(tmp_path, monkeypatch, error, blamed):
    def reject(*args, **kwargs):
        raise error

    ir = mlp()
    monkeypatch.setattr(onnx.checker, "check_model", reject)
    with pytest.raises(TieError, match=f"onnx.checker rejects {re.escape(blamed)}: ") as err:
        export(ir, "M", str(tmp_path / "m.onnx"), random_weights(ir))
    assert str(error) in err.value.message
    assert os.listdir(tmp_path) == []


def test_a_weight_of_another_dtype_is_refused_never_cast(tmp_path):
    ir = mlp()
    w = random_weights(ir)
    name = min(w)
    w[name] = w[name].astype(np.float16)
    with pytest.raises(ValueError) as err:
        export(ir, "M", str(tmp_path / "m.onnx"), w)
    assert str(err.value) == (f"weight {name!r} has dtype float16, but the parameter is f32: "
                              "convert it to float32 first if that is what you mean")
    assert not (tmp_path / "m.onnx").exists()
