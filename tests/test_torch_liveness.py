"""Local-name reuse in emitted forwards: dead values free their names, live ones are never clobbered."""
from __future__ import annotations

import torch
from tiec.backends.torch.liveness import local_names
from tiec.compiler.ir import Graph, Input, Node, Output, TensorType, frozen
from tiec.dsl.diagnostics import NOWHERE

import tiec


def _graph(nodes, outputs):
    x = Input("x", TensorType("f32", ("B", 4)), NOWHERE)
    return Graph("G", frozen(), frozen(), (x,), (), (),
                 tuple(Node(op, name, ins, frozen(), NOWHERE) for op, name, ins in nodes),
                 tuple(Output(o, o, NOWHERE) for o in outputs), NOWHERE)


def test_a_dead_value_gives_its_name_to_the_next_of_its_base():
    g = _graph([("relu", "x_1", ("x",)), ("relu", "x_2", ("x_1",)), ("tanh", "t", ("x_2",))], ["t"])
    assert local_names(g, str) == {"x": "x", "x_1": "x", "x_2": "x", "t": "t"}


def test_a_live_value_keeps_its_name():
    # a is read again by b, so a_1 must not overwrite it; b's inputs die at b
    g = _graph([("relu", "a", ("x",)), ("relu", "a_1", ("a",)), ("add", "b", ("a", "a_1")),
                ("relu", "a_2", ("b",))], ["a_2"])
    names = local_names(g, str)
    assert names["a_1"] == "a_1" and names["a_2"] == "a"


def test_outputs_survive_to_the_return():
    g = _graph([("relu", "h", ("x",)), ("tanh", "h_1", ("x",))], ["h", "h_1"])
    names = local_names(g, str)
    assert names["h"] != names["h_1"]


def test_emitted_forward_rebinds_names_and_still_matches():
    program = tiec.loads("""
model M {
    in x: [B, 8]
    repeat 3 {
        fc = Linear(8, 8)
        x = relu(fc(x)) + x
    }
    return x
}""")
    source = program.python("M")
    assert "x_3" not in source and "x = " in source  # `x = …` as a person writes it
    m = program.torch("M").double()
    x = torch.randn(2, 8, dtype=torch.float64)
    want = x
    for i in range(3):
        want = torch.relu(m.fc[i](want)) + want
    torch.testing.assert_close(m(x), want)
