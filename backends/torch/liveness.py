"""Python locals for a flat forward: a name is reused once the value it held is dead.

An unrolled forward binds every intermediate; with one local per value, each would stay alive
until `forward` returns, holding every layer's activations at once (a hand-written loop frees
them as it goes). So a value takes its SSA base name (`x_3` → `x`, `gelu_2` → `gelu`) whenever
the value that name holds has no later use, as a person writes `x = layer(x)`; the replaced
tensor is freed on the spot. Outputs stay live to the end.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from tiec.compiler.ir import Graph

_SUFFIX = re.compile(r"_\d+$")


def local_names(graph: Graph, py: Callable[[str], str]) -> dict[str, str]:
    """IR value → Python local name (`py` gives each IR name its safe spelling)."""
    end = len(graph.nodes)
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            last_use[v] = i
    for out in graph.outputs:
        last_use[out.value] = end
    local: dict[str, str] = {}
    holds: dict[str, str] = {}  # Python name → the IR value it holds now
    for i in graph.inputs:
        local[i.name] = holds_name = py(i.name)
        holds[holds_name] = i.name
    for i, node in enumerate(graph.nodes):
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
