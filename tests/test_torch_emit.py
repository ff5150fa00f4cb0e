"""The emitted source's own names and literals, on hand-built IR: model names never collide with a
name the generator introduces, and literal operands are written where they are used.
"""
from __future__ import annotations

import importlib.util

import torch
from tiec.backends.torch import build_module, generate_source
from tiec.backends.torch.codegen import class_names

from tests.torch_ir import N, T, graph, lin, program


def clash_ir():
    """Models named after the emitted code's own locals and classes, sharing and tying across models
    so `Program.__init__` needs its `peers` dict and `tie_penalty` its `penalty` local."""
    def model(name):
        return graph(name, [("x", T("B", 4))], [lin("fc", 4, 4)], [N("Linear", "y", "x", layer="fc")], ["y"])
    names = ["peers", "causal_mask", "Program", "penalty", "w"]
    return program(*map(model, names),
                   shares=[(1, ["causal_mask.fc.weight", "~Program.fc.weight"]), (2, ["peers.fc.bias", "w.fc.bias"])],
                   ties=[(3, 0.5, "l2", ["penalty.fc.weight", "w.fc.weight"]),
                         (4, 0.25, "l1", ["peers.fc.weight", "penalty.fc.weight"])])


def test_model_names_equal_to_emitted_names_do_not_collide(tmp_path):
    ir = clash_ir()
    names = class_names(ir)
    assert names == {"peers": "peers_", "causal_mask": "causal_mask_", "Program": "Program", "penalty": "penalty_",
                     "w": "w_", None: "Program_"}
    p = build_module(ir, seed=2)
    assert type(p).__name__ == "Program_" and type(p.Program).__name__ == "Program"
    assert p.w.fc.bias is p.peers.fc.bias and p.Program.fc.weight.data_ptr() == p.causal_mask.fc.weight.data_ptr()
    x = torch.randn(3, 4)
    torch.testing.assert_close(p.Program(x), x @ p.causal_mask.fc.weight + p.Program.fc.bias)
    torch.testing.assert_close(p.tie_penalty(), 0.5 * ((p.penalty.fc.weight - p.w.fc.weight) ** 2).sum()
                               + 0.25 * (p.peers.fc.weight - p.penalty.fc.weight).abs().sum())

    src = generate_source(ir)
    assert "class Program_(nn.Module):" in src and "        self.Program     = Program()" in src
    path = tmp_path / "clash.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("clash", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    emitted = mod.Program_()
    emitted.load_state_dict(p.state_dict(), strict=True)
    torch.testing.assert_close(emitted.Program(x), p.Program(x))

    alone = build_module(ir, "Program")  # alone, the model keeps its class name and its own weight
    assert type(alone).__name__ == "Program" and "class Program(nn.Module):" in generate_source(ir, "Program")


def literal_ir():
    """p: an i64 tensor. PyTorch promotes `p * 0.5` and `p / 2` to f32; `p * 4` stays i64."""
    nodes = [N("Linear", "fc", "x", layer="fc"), N("const", "const", value=4), N("mul", "h", "fc", "const"),
             N("const", "const_1", value=0.5), N("mul", "half", "p", "const_1"),
             N("const", "const_2", value=2), N("div", "quot", "p", "const_2"),
             N("const", "const_3", value=4), N("mul", "quad", "p", "const_3"),
             N("const", "const_4", value=-1.5), N("sub", "y", "const_4", "h")]
    g = graph("Lit", [("x", T("B", 3)), ("p", T("B", 3, dtype="i64"))], [lin("fc", 3, 3)], nodes,
              ["y", "half", "quot", "quad"])
    types = {"fc": T("B", 3), "h": T("B", 3), "half": T("B", 3), "quot": T("B", 3),
             "quad": T("B", 3, dtype="i64"), "y": T("B", 3)}
    return program(g, types={"Lit": types})


def test_literals_are_inlined_and_promote_as_in_torch():
    src = generate_source(literal_ir(), "Lit")
    assert "const" not in src
    lines = [" ".join(line.split()) for line in src.splitlines()]  # alignment aside
    for line in ["h = fc * 4 # [B, 3]", "half = p * 0.5 # [B, 3]", "quot = p / 2 # [B, 3]", "quad = p * 4 # i64[B, 3]",
                 "y = -1.5 - h # [B, 3]"]:
        assert line in lines, line
    m = build_module(literal_ir(), "Lit")
    x, p = torch.randn(2, 3), torch.tensor([[1, 2, 3], [-4, 5, 7]])
    y, half, quot, quad = m(x, p)
    torch.testing.assert_close(y, -1.5 - m.fc(x) * 4)
    assert half.dtype == quot.dtype == torch.float32 and quad.dtype == torch.int64
    torch.testing.assert_close(half, p.float() * 0.5)
    torch.testing.assert_close(quot, p.float() / 2)
    torch.testing.assert_close(quad, p * 4)


def test_a_literal_output_keeps_its_statement():
    g = graph("K", [("x", T("B", 2))], [], [N("const", "k", value=3), N("mul", "y", "x", "k")], ["y", "k"])
    src = generate_source(program(g), "K")
    assert "k = 3" in src and "y = x * k" in src and "return y, k" in src
    assert build_module(program(g), "K")(torch.ones(1, 2))[1] == 3
