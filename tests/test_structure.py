"""Structure survives compilation: block classes, loops, constructors that really configure depth,
blocks with several inputs and outputs, against hand-written references."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tiec
from tests.references import GPT2, Albert

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GPT2_SMALL = {"vocab": 50, "context": 16, "d": 16, "heads": 2}
ALBERT_SMALL = {"vocab": 50, "e": 8, "d": 16, "heads": 2, "ffn": 32, "max_len": 16}


def _lines(spec: str, model: str, **overrides) -> int:
    return tiec.load(EXAMPLES / spec, overrides).python(model=model).count("\n")


@pytest.mark.parametrize("spec, model", [("albert.tie", "Albert"), ("gpt2_small.tie", "GPT2Small"),
                                         ("bert.tie", "Bert")])
def test_emitted_length_does_not_depend_on_depth(spec, model):
    assert _lines(spec, model, layers=12) == _lines(spec, model, layers=48) == _lines(spec, model, layers=1)


def test_gpt2_is_a_block_class_a_module_list_and_a_loop():
    src = tiec.load(EXAMPLES / "gpt2_small.tie").python()
    assert "class Block(nn.Module):" in src and "def __init__(self, d, heads):" in src
    assert "self.h       = nn.ModuleList([Block(d, heads) for _ in range(layers)])" in src
    assert "        for h in self.h:\n            x = h(x)\n" in src
    assert "self.lm_head.weight = self.wte.weight  # shared: group 1" in src
    assert "Program" not in src  # one model: no wrapper


@pytest.mark.parametrize("layers", [1, 4])
def test_a_constructor_argument_changes_depth_like_the_reference(layers):
    cls = type(tiec.load(EXAMPLES / "gpt2_small.tie", {**GPT2_SMALL, "layers": 2}).torch())
    m = cls(layers=layers).eval()
    assert len(m.h) == layers and f"h.{layers - 1}.attn.in_proj_weight" in m.state_dict()
    ref = GPT2(**GPT2_SMALL, layers=layers).eval()
    ref.load_state_dict(m.state_dict(), strict=True)
    tokens = torch.randint(0, 50, (2, 7))
    torch.testing.assert_close(m(tokens), ref(tokens), rtol=1e-5, atol=1e-6)


def test_a_shared_repeat_count_is_a_real_argument():
    cls = type(tiec.load(EXAMPLES / "albert.tie", {**ALBERT_SMALL, "layers": 2}).torch())
    m = cls(layers=5).eval()
    ref = Albert(**ALBERT_SMALL, layers=5).eval()
    ref.load_state_dict(m.state_dict(), strict=True)
    tokens = torch.randint(0, 50, (2, 6))
    torch.testing.assert_close(m(tokens), ref(tokens), rtol=1e-5, atol=1e-6)
    assert len(m.state_dict()) == len(cls(layers=1).state_dict())  # one layer, applied 5 times


def test_an_index_into_copies_makes_the_constructor_check_the_depth():
    src = """
block Res(d) {
    in x: [B, d]
    fc = Linear(d, d)
    return x + fc(x)
}
model M(depth = 4) {
    in x: [B, 4]
    repeat depth {
        blk = Res(4)
        x = blk(x)
    }
    share blk[3].fc, blk[0].fc
    return x
}
"""
    cls = type(tiec.loads(src).torch())
    m = cls(depth=6)
    assert m.blk[3].fc.weight is m.blk[0].fc.weight and m.blk[5].fc.weight is not m.blk[0].fc.weight
    with pytest.raises(ValueError, match=r"refers to blk\[3\], so depth must be at least 4"):
        cls(depth=3)


PAIR = """
block Pair {
    in a: [B, 4]
    in b: [B, 4]
    fc = Linear(4, 4)
    return fc(a) + b, relu(fc(b)) - a
}
model M {
    in x: [B, 4]
    in y: [B, 4]
    p = Pair()
    u, v = p(x, y)
    repeat 3 {
        q = Pair()
        u, v = q(u, v)
    }
    return u * v
}
"""


def test_blocks_take_and_return_several_values():
    program = tiec.loads(PAIR)
    m = program.torch().double()
    x, y = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)

    def pair(fc: nn.Linear, a, b):
        return fc(a) + b, F.relu(fc(b)) - a

    u, v = pair(m.p.fc, x, y)
    for i in range(3):
        u, v = pair(m.q[i].fc, u, v)
    torch.testing.assert_close(m(x, y), u * v)
    src = program.python()
    assert "def forward(self, a, b):" in src and "u, v = self.p(x, y)" in src
    assert "for q in self.q:\n            u, v = q(u, v)" in src
    onnx_in = program.ir.models["M"]
    assert len([n for n in onnx_in.nodes if n.op == "Linear"]) == 8  # the flat view: 4 calls of 2 layer uses


def test_destructuring_needs_one_name_per_value():
    bad = PAIR.replace("u, v = p(x, y)", "u, v, w = p(x, y)")
    with pytest.raises(tiec.TieError, match=r"3 names for 2 value\(s\)"):
        tiec.loads(bad)
    with pytest.raises(tiec.TieError, match="returns 2 values; a call needs one"):
        tiec.loads(PAIR.replace("u, v = p(x, y)", "u = relu(p(x, y))\n    v = u"))


def test_nested_repeats_are_nested_module_lists_and_loops():
    program = tiec.loads("""
model M {
    in x: [B, 4]
    repeat 2 {
        repeat 3 {
            fc = Linear(4, 4)
            x = tanh(fc(x))
        }
        norm = LayerNorm(4)
        x = norm(x)
    }
    return x
}""")
    m = program.torch().double()
    assert isinstance(m.fc, nn.ModuleList) and isinstance(m.fc[1], nn.ModuleList) and len(m.fc[1]) == 3
    x = torch.randn(2, 4, dtype=torch.float64)
    want = x
    for i in range(2):
        for j in range(3):
            want = torch.tanh(m.fc[i][j](want))
        want = m.norm[i](want)
    torch.testing.assert_close(m(x), want)
    src = program.python()
    assert "for fc_row, norm in zip(self.fc, self.norm):" in src and "for fc in fc_row:" in src


def test_a_block_with_internal_sharing_aliases_in_its_own_class():
    program = tiec.load(Path(__file__).parent / "fixtures" / "good" / "block_sharing.tie")
    src = program.python()
    assert 'self.dec.owner = (self.enc, "weight")  # shared, read transposed' in src
    m = program.torch()
    assert m.ae.dec.weight.data_ptr() == m.ae.enc.weight.data_ptr()
    assert "ae.dec.weight" not in m.state_dict()


LOOP_RELATIONS = """
model M(n = 3) {
    in x: [B, 4]
    base = Linear(4, 4)
    repeat n {
        a = Linear(4, 4)
        b = Linear(4, 4) share weight = a.weight
        c = Linear(4, 4) tie(0.5) base
        x = c(b(a(x)))
    }
    return x
}
"""


@pytest.mark.parametrize("n", [2, 5])
def test_shares_and_ties_inside_a_repeat_are_written_once_as_loops(n):
    program = tiec.loads(LOOP_RELATIONS, {"n": n})
    src = program.python()
    assert src.count("\n") == tiec.loads(LOOP_RELATIONS, {"n": 7}).python().count("\n")
    assert "for a, b in zip(self.a, self.b):\n            b.weight = a.weight  # shared: one tensor per copy" in src
    assert "for i, c in enumerate(self.c):\n            penalty = penalty + self.tie_strength_1[i] * F.mse_loss(c.weight, " \
           "self.base.weight, reduction=\"sum\")" in src
    m = program.torch().double()
    assert all(m.b[i].weight is m.a[i].weight for i in range(n)) and m.b[0].weight is not m.a[1].weight
    want = sum(0.5 * ((m.c[i].weight - m.base.weight) ** 2).sum() + 0.5 * ((m.c[i].bias - m.base.bias) ** 2).sum()
               for i in range(n))
    torch.testing.assert_close(m.tie_penalty(), want)
    x = torch.randn(2, 4, dtype=torch.float64)
    want = x
    for i in range(n):
        want = m.c[i](F.linear(m.a[i](want), m.a[i].weight, m.b[i].bias))
    torch.testing.assert_close(m(x), want)


def test_a_symbol_in_a_reshape_copies_the_input_dim_in_the_emitted_forward():
    program = tiec.loads("model M {\n    in x: [B, 4]\n    return reshape(x, [B, 2, 2])\n}\n")
    assert "x.reshape(x.shape[0], 2, 2)" in program.python()
    x = torch.randn(3, 4)
    torch.testing.assert_close(program.torch()(x), x.reshape(3, 2, 2))
