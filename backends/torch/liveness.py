"""Python locals for a flat forward: a name is reused once the value it held is dead.

An unrolled forward binds every intermediate; with one local per value, each would stay alive
until `forward` returns, holding every layer's activations at once (a hand-written loop frees
them as it goes). So a value takes its SSA base name (`x_3` → `x`, `gelu_2` → `gelu`) whenever
the value that name holds has no later use, as a person writes `x = layer(x)`; the replaced
tensor is freed on the spot. Outputs stay live to the end. A literal operand is written into the
expression that uses it (`h = fc * 4`), as a person would, and takes no local at all.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Collection

from tiec.compiler.ir import Graph

from .naming import literal

_SUFFIX = re.compile(r"_\d+$")


# Ops whose row renders its operands with infix operators, where a literal reads as it would in
# hand-written code (`h * 4`); elsewhere (a method call on it, a graph output) it needs a name.
_INFIX = frozenset({"add", "sub", "mul", "div"})


def inlined_literals(graph: Graph) -> dict[str, str]:
    """`const` value → its Python literal, for each constant written into the expressions that use it
    rather than bound to a local: one whose every use is an infix arithmetic operand."""
    out = {n.name: literal(n.attrs["value"]) for n in graph.nodes if n.op == "const"}
    for node in graph.nodes:
        if node.op not in _INFIX:
            for v in node.inputs:
                out.pop(v, None)
    for o in graph.outputs:
        out.pop(o.value, None)
    return out


def local_names(graph: Graph, py: Callable[[str], str], skip: Collection[str] = ()) -> dict[str, str]:
    """IR value → Python local name (`py` gives each IR name its safe spelling); the values in
    `skip` (inlined literals) are bound to no name and hold none."""
    nodes = [n for n in graph.nodes if n.name not in skip]
    end = len(nodes)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for v in node.inputs:
            last_use[v] = i
    for out in graph.outputs:
        last_use[out.value] = end
    local: dict[str, str] = {}
    holds: dict[str, str] = {}  # Python name → the IR value it holds now
    for i in graph.inputs:
        local[i.name] = holds_name = py(i.name)
        holds[holds_name] = i.name
    for i, node in enumerate(nodes):
        base = py(_SUFFIX.sub("", node.name))
        held = holds.get(base)
        # the right-hand side is evaluated before the assignment, so a value last used by this
        # very node may be overwritten by its result
        name = base if held is None or last_use.get(held, -1) <= i else py(node.name)
        previous = holds.get(name)
        if previous is not None and last_use.get(previous, -1) > i:
            name = py(node.name)  # never clobber a live value
        local[node.name] = name
        holds[name] = node.name
    return local
