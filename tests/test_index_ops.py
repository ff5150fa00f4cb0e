"""Slicing and indexing ops: the live module and onnxruntime against the same indexing written by
hand in PyTorch, at several sequence lengths through one ONNX file."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiec.dsl.diagnostics import TieError

import tiec

SPEC = """
model M(d = 12) {
    in x: f32[B, T, d]
    in ids: i64[5]
    in g: i64[B, T, 2]
    q, k, v = chunk(x, 3, dim=-1)
    a, b = split(x, [4, 8], dim=2)
    s = slice(slice(x, 1, 1), dim=2, start=2, end=10, step=2)
    last = slice(x, -2, start=-3)
    first = select(x, 1, 0)
    u = squeeze(unsqueeze(first, 1), -2)
    t = index_select(x, 2, ids)
    h = gather(x, 2, g)
    return q + k * v, a, b, s, last, u, t, h
}
"""


def reference(x, ids, g):
    q, k, v = x.chunk(3, dim=-1)
    a, b = x[..., :4], x[..., 4:]
    return (q + k * v, a, b, x[:, 1:, 2:10:2], x[:, -3:], x[:, 0], x[:, :, ids], torch.gather(x, 2, g))


def inputs(batch: int, t: int):
    gen = torch.Generator().manual_seed(t)
    return (torch.randn(batch, t, 12, generator=gen), torch.tensor([11, 0, 3, 3, 7]),
            torch.randint(0, 12, (batch, t, 2), generator=gen))


def test_indexing_matches_hand_written_torch_and_onnxruntime(tmp_path):
    program = tiec.loads(SPEC)
    module = program.torch().eval()
    path = tmp_path / "ix.onnx"
    program.onnx(path, weights=module)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, t in ((2, 5), (1, 8), (3, 4)):
        feeds = inputs(batch, t)
        got = module(*feeds)
        for have, want in zip(got, reference(*feeds), strict=True):
            torch.testing.assert_close(have, want, rtol=0, atol=0)
        outs = session.run(None, dict(zip(("x", "ids", "g"), (f.numpy() for f in feeds))))
        for have, want in zip(outs, got, strict=True):
            np.testing.assert_allclose(have, want.numpy(), rtol=1e-6, atol=0)


def test_pieces_take_the_names_they_are_unpacked_to():
    source = tiec.loads(SPEC).python()
    assert "q, k, v = x.chunk(3, dim=-1)" in source  # every piece, in order: one unpacking line
    assert "a, b = x.split([4, 8], dim=2)" in source
    assert "first = x[:, 0]" in source and "x[..., -3:, :]" in source


def check(body: str) -> None:
    statement = body if "=" in body.split("(")[0] else f"y = {body}"
    tiec.loads(f"model M {{\n    in x: f32[B, T, 12]\n    in i: i64[4]\n    in j: i64[2, 2]\n    {statement}\n"
               "    return y\n}\n")


@pytest.mark.parametrize(("body", "message"), [
    ("y, b, c, d, e = chunk(x, 5, dim=-1)", "chunk: 12 along dim 2 does not make 5 equal chunks"),
    ("y, b = chunk(x, 2, dim=1)", "chunk needs a fixed size along dim 1, got T"),
    ("y, b = split(x, [4, 4], dim=2)", "split: the sizes [4, 4] add up to 8, but dim 2 is 12"),
    ("chunk(x, 0)", "chunk makes between 1 and 4,096 pieces, not 0"),
    ("chunk(x, 5000, dim=2)", "chunk makes between 1 and 4,096 pieces, not 5,000"),
    ("squeeze(x, 1)", "squeeze: dim 1 of [B, T, 12] is T, not 1"),
    ("select(x, 2, 12)", "select: index 12 is out of range for dim 2 of size 12"),
    ("slice(x, 2, step=0)", "slice: step must be at least 1"),
    ("slice(x, 3)", "dim 3 is out of range"),
    ("gather(x, 2, i)", "gather: the index i64[4] needs the input's rank (3)"),
    ("index_select(x, 2, j)", "index_select takes a 1-D index"),
    ("index_select(x, 2, x)", "index_select takes an integer index, got f32"),
])
def test_bad_indexing_is_a_located_error(body, message):
    with pytest.raises(TieError) as info:
        check(body)
    assert message in str(info.value)
    assert info.value.span.line == 5


def test_unpacking_the_wrong_number_of_pieces():
    with pytest.raises(TieError, match="2 names for 3 value"):
        tiec.loads("model M {\n    in x: f32[B, 12]\n    a, b = chunk(x, 3, dim=1)\n    return a\n}\n")
