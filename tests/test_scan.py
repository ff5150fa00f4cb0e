"""Loops over a runtime dimension (`repeat x_t in unbind(x, dim) { … }`) against loops written by
hand in PyTorch: what is carried and what is stacked, layers that exist once for every step, the
loop inside blocks, repeats and other such loops, and onnxruntime through one file for several
lengths."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiec.dsl.diagnostics import TieError

import tiec


def onnx_outputs(program, module, tmp_path, feeds: dict[str, torch.Tensor]):
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=module)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return onnx.load(path), session.run(None, {k: v.numpy() for k, v in feeds.items()})


CELL = """
model Cell(d = 3, h = 5) {
    in x: [B, T, d]
    in h0: [B, h]
    state = h0
    repeat x_t in unbind(x, 1) {
        cell = Linear(d + h, h)            # one layer for every step
        state = tanh(cell(concat([x_t, state], dim=-1)))
        gate = sigmoid(state)              # each step's value: stacked after the loop
    }
    return gate, state
}
"""


def test_carried_and_stacked_values_and_one_layer_for_every_step(tmp_path):
    program = tiec.loads(CELL)
    module = program.torch().eval()
    assert sorted(module.state_dict()) == ["cell.bias", "cell.weight"]
    for t in (1, 6):
        x, h0 = torch.randn(2, t, 3), torch.randn(2, 5)
        state, gates = h0, []
        for step in range(t):  # by hand
            state = torch.tanh(module.cell(torch.cat([x[:, step], state], -1)))
            gates.append(torch.sigmoid(state))
        with torch.no_grad():
            gate, last = module(x, h0)
        torch.testing.assert_close(gate, torch.stack(gates, 1))
        torch.testing.assert_close(last, state)
        proto, (o_gate, o_last) = onnx_outputs(program, module, tmp_path, {"x": x, "h0": h0})
        np.testing.assert_allclose(o_gate, gate.numpy(), rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(o_last, last.numpy(), rtol=1e-3, atol=1e-5)
        assert sorted(i.name for i in proto.graph.initializer if "cell" in i.name) == ["cell.bias", "cell.weight"]


NESTED = """
block Scanner(d) {
    in x: [B, T, d]
    acc = select(x, 1, 0) * 0.0
    repeat x_t in unbind(x, -2) {
        proj = Linear(d, d, bias=false)
        acc = acc + relu(proj(x_t))
    }
    return acc
}

model Deep(d = 4) {
    in x: [N, B, T, d]
    repeat 2 {
        scanner = Scanner(d)                # two copies, each with its own loop and layer
    }
    total = select(select(x, 0, 0), 1, 0) * 0.0
    repeat grid in unbind(x, 0) {           # a loop over N around the blocks' loops over T
        total = total + scanner[0](grid) + scanner[1](grid)
        first = select(grid, 1, 0)
    }
    return total, first
}
"""


def test_loops_in_blocks_in_repeats_and_in_each_other(tmp_path):
    program = tiec.loads(NESTED)
    module = program.torch().eval()
    assert sorted(module.state_dict()) == ["scanner.0.proj.weight", "scanner.1.proj.weight"]
    x = torch.randn(3, 2, 5, 4)

    def scan(proj, seq):
        acc = torch.zeros(seq.shape[0], 4)
        for step in seq.unbind(-2):
            acc = acc + torch.relu(proj(step))
        return acc

    total = torch.zeros(2, 4)
    for grid in x.unbind(0):
        total = total + scan(module.scanner[0].proj, grid) + scan(module.scanner[1].proj, grid)
    with torch.no_grad():
        got_total, got_first = module(x)
    torch.testing.assert_close(got_total, total)
    torch.testing.assert_close(got_first, x[:, :, 0])  # each grid's first row, stacked along dim 0
    for n in (1, 3):
        xs = torch.randn(n, 2, 7, 4)
        with torch.no_grad():
            want = module(xs)
        proto, outs = onnx_outputs(program, module, tmp_path, {"x": xs})
        for o, w in zip(outs, want):
            np.testing.assert_allclose(o, w.numpy(), rtol=1e-3, atol=1e-5)
    scans = [n for n in proto.graph.node if n.op_type == "Scan"]
    assert len(scans) == 1
    inner = [n.op_type for n in scans[0].attribute[0].g.node]
    assert inner.count("Scan") == 2  # one per block copy, inside the outer loop


def test_the_scanned_dim_counts_from_either_end():
    program = tiec.loads("""
model M {
    in x: [B, T, 4]
    repeat col in unbind(x, -1) {
        y = col * 2.0
    }
    return y
}""")
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(program.torch()(x), x * 2.0)  # stacked back along the last dim


@pytest.mark.parametrize("body, message", [
    ("repeat x_t in x {\n        y = x_t\n    }", "steps through `unbind(x, dim)`"),
    ("repeat x_t in unbind(x, 3) {\n        y = x_t\n    }", "dim 3 is out of range for a 3-D tensor"),
    ("s = select(x, 1, 0)\n    repeat x_t in unbind(x, 1) {\n        s = concat([s, x_t], dim=-1)\n    }",
     "'s' is f32[B, 4] before a step and f32[B, 8] after it"),
    ("repeat x_t in unbind(x, 2) {\n        y = mean(x_t, -1)\n    }", "it cannot be stacked along dim 2"),
])
def test_errors_are_located(body, message):
    result = "s" if "s = " in body else "y"
    text = f"model M {{\n    in x: [B, T, 4]\n    {body}\n    return {result}\n}}\n"
    with pytest.raises(TieError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as e:
        tiec.loads(text)
    assert e.value.span.line >= 3
