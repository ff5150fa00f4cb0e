"""The ONNX lowering of `scan` (a loop over a runtime dimension): one opset-18 `Scan` node.

Rule: the body's nodes lower, by the same table as the graph's, into the Scan's body graph, whose
inputs are the state values then the step's slice and whose outputs are the next state then the
step's stacked values. The body reads every weight from the outer scope, so each share group is
still one initializer, read by every step. `scan_input_axes` and `scan_output_axes` are the dim
the loop steps along, so T stays dynamic and one file runs every sequence length.
"""
from __future__ import annotations

from collections.abc import Callable

from onnx import helper
from tiec.compiler import ir
from tiec.compiler.shapes_scan import scan_dim

from .builder import GraphBuilder, value_info


def emit_scan(b: GraphBuilder, node: ir.Node, lower_nodes: Callable[[GraphBuilder, tuple], None]) -> None:
    a = node.attrs
    dim = scan_dim(b.types[node.inputs[0]], a["dim"], node.span)
    outer_values = [b.value(v) for v in node.inputs]  # before the body: a lazy value is made out here
    outer = b.enter_scope()
    for name in (*a["state"], a["slice"]):
        b.bind_input(name)
    lower_nodes(b, a["body"])
    outputs, seen = [], set()
    for value in (*a["results"], *a["stacked"]):
        name = b.value(value)
        if name in seen or name in (*a["state"], a["slice"]) or not b.made_in_scope(name):
            name = b.node("Identity", [name])  # a body output is a value of its own
        seen.add(name)
        outputs.append(name)
    body_nodes = b.leave_scope(outer)
    body_inputs = [value_info(v, b.types[v]) for v in (*a["state"], a["slice"])]
    body_outputs = [value_info(o, b.types[v]) for o, v in zip(outputs, (*a["results"], *a["stacked"]))]
    body = helper.make_graph(body_nodes, f"{node.name}_step", body_inputs, body_outputs)
    b.blame = (f"node '{node.name}' (scan)", node.span)
    stacked = len(a["stacked"])
    axes = {"scan_output_axes": [dim] * stacked} if stacked else {}
    outs = b.node("Scan", [*outer_values[1:], outer_values[0]], n=len(a["outputs"]), body=body,
                  num_scan_inputs=1, scan_input_axes=[dim], **axes)
    outs = [outs] if isinstance(outs, str) else outs
    for name, onnx_name in zip(a["outputs"], outs):
        b.bind_output(name, onnx_name)
