"""A large inline export streams its weights after the graph (backends/onnx/inline.py): parsed, the
file is the model the one-piece serialisation gives, and onnxruntime runs it."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tiec.backends.onnx import inline
from tiec.backends.onnx.emit import build

import tiec

SPEC = """
model Wide(d = 1536) {
    in x: [B, d]
    a = Linear(d, d)
    b = Linear(d, d)
    share b.weight, a.weight.T
    h = Embedding(10, d, dtype="f16")
    return b(relu(a(x))), h(cast(x, "i64"))
}
"""


def test_the_streamed_file_parses_to_the_one_piece_model(tmp_path, monkeypatch):
    program = tiec.loads(SPEC)
    module = program.torch(seed=5).eval()
    assert program.stats()["models"]["Wide"]["unique_bytes"] > inline.STREAM_FROM  # takes the streamed path
    path = tmp_path / "wide.onnx"
    info = program.onnx(path, weights=module)
    data = path.read_bytes()
    assert info["bytes"] == len(data)
    proto, _ = build(program.ir, "Wide", program.weights_for("Wide", module))
    assert onnx.load_from_string(data).SerializeToString(deterministic=True) == proto.SerializeToString(
        deterministic=True)
    assert [t.name for t in onnx.load_from_string(data).graph.initializer][:3] == ["a.weight", "a.bias", "b.bias"]
    onnx.checker.check_model(str(path), full_check=True)
    x = torch.rand(3, 1536) * 9
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = module(x)
    np.testing.assert_allclose(out[0], want[0].numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(out[1], want[1].numpy())
    # a second export of the same weights writes the same bytes
    program.onnx(tmp_path / "again.onnx", weights=module)
    assert (tmp_path / "again.onnx").read_bytes() == data
