"""`sdpa`: grouped-query attention with padding and causal masks, against attention written out by
hand in PyTorch, and onnxruntime against the live module at several sequence lengths."""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiec.dsl.diagnostics import TieError

import tiec

SPEC = """
model Att(d = 16, heads = 4, kv = 2) {
    in x: f32[B, T, d]
    in keep: bool[B, 1, 1, T]
    in bias: f32[B, 1, T, T]
    wq = Linear(d, d)
    wk = Linear(d, d // heads * kv)
    wv = Linear(d, d // heads * kv)
    q = transpose(reshape(wq(x), [B, T, heads, -1]), 1, 2)
    k = transpose(reshape(wk(x), [B, T, kv, -1]), 1, 2)
    v = transpose(reshape(wv(x), [B, T, kv, -1]), 1, 2)
    padded = sdpa(q, k, v, mask=keep)
    causal = sdpa(q, k, v, causal=true, scale=0.5)
    added = sdpa(q, v, k, attn_mask=bias)
    return reshape(transpose(padded + causal + added, 1, 2), [B, T, d])
}
"""


def attention(q, k, v, mask=None, causal=False, scale=None):
    """softmax(q kᵀ · scale + mask) v, key/value heads repeated for the query heads."""
    groups = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if causal:
        scores = scores.masked_fill(torch.ones(q.shape[-2], k.shape[-2]).triu(1).bool(), -math.inf)
    elif mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, -math.inf)
    elif mask is not None:
        scores = scores + mask
    return scores.softmax(-1) @ v


def reference(module, x, keep, bias):
    b, t, d = x.shape
    heads = lambda y, h: y.reshape(b, t, h, -1).transpose(1, 2)
    q, k, v = heads(module.wq(x), 4), heads(module.wk(x), 2), heads(module.wv(x), 2)
    out = attention(q, k, v, mask=keep) + attention(q, k, v, causal=True, scale=0.5) + attention(q, v, k, mask=bias)
    return out.transpose(1, 2).reshape(b, t, d)


def inputs(batch: int, t: int):
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(batch, t, 16, generator=gen)
    keep = torch.ones(batch, 1, 1, t, dtype=torch.bool)
    keep[0, ..., t // 2:] = False  # the first sequence is padded after its middle
    return x, keep, torch.randn(batch, 1, t, t, generator=gen)


def test_sdpa_matches_attention_written_out_and_onnxruntime(tmp_path):
    program = tiec.loads(SPEC)
    module = program.torch(seed=1).eval()
    path = tmp_path / "att.onnx"
    program.onnx(path, weights=module)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, t in ((2, 5), (3, 9), (1, 2)):  # one file, several lengths
        x, keep, bias = inputs(batch, t)
        with torch.no_grad():
            want = reference(module, x, keep, bias)
            got = module(x, keep, bias)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        out = session.run(None, {"x": x.numpy(), "keep": keep.numpy(), "bias": bias.numpy()})[0]
        np.testing.assert_allclose(out, got.numpy(), rtol=1e-3, atol=1e-5)


def test_the_emitted_call_is_pytorchs_sdpa():
    source = tiec.loads(SPEC).python()
    assert "F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)" in source
    assert "is_causal=True, scale=0.5, enable_gqa=True" in source


BAD_HEAD = "model M {{\n    in q: f32[B, {hq}, T, 8]\n    in k: f32[B, {hk}, T, 8]\n    in m: {m}\n    y = {call}\n    return y\n}}\n"


@pytest.mark.parametrize(("hq", "hk", "m", "call", "message"), [
    (4, 2, "bool[B, 1, 1, T]", "sdpa(q, k, k, mask=m, causal=true)", "sdpa takes a mask or causal=true, not both"),
    (4, 3, "bool[B, 1, 1, T]", "sdpa(q, k, k)", "4 query heads are not a multiple of 3 key/value heads"),
    (4, 2, "i64[B, 1, 1, T]", "sdpa(q, k, k, mask=m)", "the mask must be bool or f32, got i64"),
    (4, 2, "bool[B, 3, 1, T]", "sdpa(q, k, k, mask=m)", "must broadcast to the scores' shape [B, 4, T, T]"),
    (4, 2, "bool[B, 1, 1, T]", "sdpa(q, k, q)", "sdpa: k and v have different head counts (2 and 4)"),
])
def test_sdpa_errors_are_located(hq, hk, m, call, message):
    with pytest.raises(TieError) as info:
        tiec.loads(BAD_HEAD.format(hq=hq, hk=hk, m=m, call=call))
    assert message in str(info.value)
    assert info.value.span.line == 5
