"""A block's declared input symbols bind to the caller's dims at each call, so a reshape inside the
block may name them (`reshape(x, [N, L, h, -1])` for `in x: [N, L, D]` called on `[B, T, 8]`)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiec.dsl.diagnostics import TieError

import tiec

SPEC = """
block Heads(h) {
    in x: [N, L, D]
    y = reshape(x, [N, L, h, -1])
    z = reshape(y, [N, L, -1])
    return transpose(y, 1, 2), z
}
model M {
    in a: f32[B, T, 8]
    in b: f32[S, 3, 6]
    ha = Heads(2)
    hb = Heads(3)
    ya, za = ha(a)
    yb, zb = hb(b)
    return ya, za, yb, zb
}
"""


def test_block_symbols_bind_to_each_callers_dims(tmp_path):
    program = tiec.loads(SPEC)
    outputs = program.stats()["models"]["M"]["outputs"]
    assert (outputs["ya"], outputs["yb"]) == ("f32[B, 2, T, 4]", "f32[S, 3, 3, 2]")
    module = program.torch().eval()
    a, b = torch.randn(2, 5, 8), torch.randn(4, 3, 6)
    want = (a.reshape(2, 5, 2, 4).transpose(1, 2), a, b.reshape(4, 3, 3, 2).transpose(1, 2), b)  # by hand
    got = module(a, b)
    for have, ref in zip(got, want, strict=True):
        torch.testing.assert_close(have, ref, rtol=0, atol=0)
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=module)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for t in (5, 1):
        a = torch.randn(3, t, 8)
        outs = session.run(None, {"a": a.numpy(), "b": b.numpy()})
        np.testing.assert_array_equal(outs[0], module(a, b)[0].numpy())


def test_a_bound_symbol_must_still_stand_where_the_input_has_it():
    bad = SPEC.replace("z = reshape(y, [N, L, -1])", "z = reshape(x, [N, D, -1])")
    with pytest.raises(TieError, match=r"reshape: symbol 'D' \(8 at this call\) must stand where the input has it"):
        tiec.loads(bad)
