"""Small inline specs through the whole pipeline: structures the examples do not cover.

Each compiles, builds the torch module, checks its state-dict layout and tensor count against
`stats`, and compares onnxruntime with torch.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

import tiec


def _ort_matches(program, model, module, inputs, tmp_path, weights=None):
    path = tmp_path / f"{model}.onnx"
    program.onnx(path, model=model, weights=module if weights is None else weights)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    with torch.no_grad():
        want = module(*inputs)
    got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-5)


def test_nested_repeats_make_nested_lists_and_index_into_them(tmp_path):
    program = tiec.loads("""
model M {
    in x: [B, 4]
    repeat 2 {
        repeat 3 {
            fc = Linear(4, 4)
            x = fc(x)
        }
        out = Linear(4, 4)
        x = out(x)
    }
    share fc[1][2], fc[0][0]
    return x
}""")
    m = program.torch("M")
    keys = list(m.state_dict())
    assert keys[:2] == ["fc.0.0.weight", "fc.0.0.bias"] and "fc.1.2.weight" in keys and "out.1.bias" in keys
    assert m.fc[1][2].weight is m.fc[0][0].weight
    assert sum(p.numel() for p in m.parameters()) == program.stats()["models"]["M"]["unique_params"] == 140
    _ort_matches(program, "M", m, [torch.randn(3, 4)], tmp_path)


def test_cross_model_transposed_share_is_one_tensor_in_the_program_module(tmp_path):
    program = tiec.loads("""
model Enc {
    in x: [B, 6]
    enc = Linear(6, 3)
    return relu(enc(x))
}
model Dec {
    in h: [B, 3]
    dec = Linear(3, 6)
    return dec(h)
}
share Enc.enc.weight, Dec.dec.weight.T
""")
    whole = program.torch()
    assert "Dec.dec.weight" not in whole.state_dict()
    assert sum(p.numel() for p in whole.parameters()) == program.stats()["program"]["unique_params"] == 18 + 3 + 6
    h = torch.randn(2, 3)
    with torch.no_grad():
        want = h @ whole.Enc.enc.weight + whole.Dec.dec.bias
        torch.testing.assert_close(whole.Dec(h), want)
    # exported alone with the all-models module's weights, Dec reads Enc's tensor, transposed
    _ort_matches(program, "Dec", whole.Dec, [h], tmp_path, weights=whole)
    copy = __import__("copy").deepcopy(whole)
    with torch.no_grad():
        copy.Enc.enc.weight.add_(1.0)
        torch.testing.assert_close(copy.Dec(h), h @ copy.Enc.enc.weight + copy.Dec.dec.bias)


def test_block_copies_share_into_a_repeat_and_tie_by_index():
    program = tiec.loads("""
block Pair(d) {
    in x: [B, d]
    up = Linear(d, 2 * d)
    down = Linear(2 * d, d) share weight = up.weight.T
    return x + down(gelu(up(x)))
}
model M(d = 8, n = 3) {
    in x: [B, d]
    repeat n {
        blk = Pair(d)
        x = blk(x)
    }
    tie(0.5) blk[0].up, blk[2].up
    return x
}""")
    m = program.torch("M").double()
    assert "blk.0.down.weight" not in m.state_dict() and "blk.2.down.bias" in m.state_dict()
    want = 0.5 * sum(((getattr(m.blk[0].up, s) - getattr(m.blk[2].up, s)) ** 2).sum() for s in ("weight", "bias"))
    torch.testing.assert_close(m.tie_penalty(), want)
    assert program.stats()["models"]["M"]["unique_params"] == 3 * (8 * 16 + 16 + 8)


def test_aliasing_a_value_adds_no_node():
    program = tiec.loads("model M {\n in x: [B, 4]\n a = relu(x)\n b = a\n return a + b\n}\n")
    x = torch.randn(2, 4)
    torch.testing.assert_close(program.torch("M")(x), 2 * torch.relu(x))


def test_model_parameters_baked_into_the_graph_are_fixed_in_the_emitted_class():
    program = tiec.loads("model M(d = 4, scale = 2) {\n in x: [B, d]\n fc = Linear(d, d)\n"
                         " return fc(x) * scale\n}\n")
    assert "scale" in program.ir.models["M"].structural
    emitted = type(program.torch("M"))  # the class compiled from the emitted source
    emitted(d=8)  # sizes follow the parameter …
    try:
        emitted(scale=3)  # … a literal in the forward cannot
    except ValueError as e:
        assert "scale" in str(e)
    else:
        raise AssertionError("a changed structural parameter was accepted")


def test_a_tie_inside_repeat_share_counts_once():
    program = tiec.loads("""
model M {
    in x: [B, 4]
    o = Linear(4, 4)
    repeat 3 share {
        l = Linear(4, 4)
        tie(0.1) l.weight, o.weight
        x = l(x)
    }
    return o(x)
}""")
    m = program.torch("M").double()
    assert len(program.stats()["tie_groups"]) == 1
    torch.testing.assert_close(m.tie_penalty(), 0.1 * ((m.l.weight - m.o.weight) ** 2).sum())


def test_integer_tensors_promote_like_torch(tmp_path):
    program = tiec.loads("model M {\n in t: i64[B, T]\n p = positions(t)\n return p * 0.5, p / 2, p * 2\n}\n")
    types = program.stats()["models"]["M"]["outputs"]
    assert list(types.values()) == ["f32[T]", "f32[T]", "i64[T]"]
    m = program.torch("M")
    t = torch.zeros(2, 5, dtype=torch.int64)
    want = m(t)
    path = tmp_path / "m.onnx"
    program.onnx(path, model="M", weights=m)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"t": t.numpy()})
    for g, w in zip(got, want):
        assert g.dtype == w.numpy().dtype
        np.testing.assert_allclose(g, w.numpy())


def test_long_expressions_compile_and_absurd_ones_are_refused():
    terms = " + ".join(["x"] * 600)
    m = tiec.loads(f"model M {{\n in x: [B, 4]\n return {terms}\n}}\n").torch("M")
    x = torch.randn(2, 4)
    want = x
    for _ in range(599):  # left to right, as the expression associates
        want = want + x
    torch.testing.assert_close(m(x), want)
    # a chain is walked in a loop: 10,000 terms compile, in tensors and in configuration values alike
    terms = " + ".join(["x"] * 10_000)
    assert len(tiec.loads(f"model M {{\n in x: [B, 4]\n return {terms}\n}}\n").ir.models["M"].nodes) == 9_999
    m = tiec.loads("model M(d = 4) {\n in x: [B, 4]\n fc = Linear(d" + " + 0" * 10_000 + ", 4)\n return fc(x)\n}\n")
    assert m.torch().fc.in_features == 4
    # what nests inside an operand has one located limit
    deep = "relu(" * 65 + "x" + ")" * 65
    try:
        tiec.loads(f"model M {{\n in x: [B, 4]\n return {deep}\n}}\n")
    except tiec.TieError as e:
        assert e.render().startswith("<string>:3:") and "nests 65 levels deep; the limit is 64" in e.render()
    else:
        raise AssertionError("a 65-deep expression compiled")
