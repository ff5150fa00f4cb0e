"""Rules on literals and pieces that keep a spec within what both backends run: a number an op
computes in an integer dtype fits in it (the refusals are in the bad-input corpus), an integer
tensor takes a negative power only as a float, and a chunk or split of one piece is one value.
Each accepted case is checked against PyTorch by hand and against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

import tiec

SPEC = """
model M {
    in x: [B, 12]
    in i: i32[B, 3]
    y = split(x, [12], dim=1)                   # one piece: a plain binding
    edge = i * 0 + 2147483647                   # the largest i32 still fits
    return relu(chunk(x, 1, dim=1)) + y, pow(i, -1.0), edge
}
"""


def test_accepted_literals_and_single_pieces_match_torch_and_onnxruntime(tmp_path):
    program = tiec.loads(SPEC)
    module = program.torch().eval()
    x = torch.randn(2, 12, generator=torch.Generator().manual_seed(0))
    i = torch.tensor([[1, 2, 4], [5, -8, 10]], dtype=torch.int32)
    with torch.no_grad():
        got = module(x, i)
    want = (torch.relu(x) + x, torch.pow(i, -1.0), torch.full_like(i, 2 ** 31 - 1))
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.int32
    for have, ref in zip(got, want, strict=True):
        torch.testing.assert_close(have, ref, rtol=1e-6, atol=1e-6)
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=module)
    outs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy(), "i": i.numpy()})
    for have, ref in zip(outs, got, strict=True):
        np.testing.assert_allclose(have, ref.numpy(), rtol=1e-3, atol=1e-5)
