"""Python locals for a forward: a name is reused once the value it held is dead.

A forward binds every intermediate; with one local per value, each would stay alive until
`forward` returns, holding every layer's activations at once (a hand-written model frees them as
it goes). So a value takes its SSA base name (`x_3` → `x`, `gelu_2` → `gelu`) whenever the value
that name holds has no later use, as a person writes `x = layer(x)`; the replaced tensor is freed
on the spot. Outputs stay live to the end. A literal operand is written into the expression that
uses it (`h = fc * 4`), as a person would, and takes no local at all.

In a loop body, a value read from outside the loop stays live to the loop's end (the next
iteration reads it again); a value the body carries keeps one local across iterations, and one
the body binds for after the loop stays live to the body's end.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable

from tiec.compiler.catalog import OP_SIGNATURES
from tiec.compiler.ir import Graph, Loop, Node
from tiec.compiler.lower import nodes_of

from .naming import literal

_SUFFIX = re.compile(r"_\d+$")

# Ops whose row renders its operands with infix operators, where a literal reads as it would in
# hand-written code (`h * 4`); elsewhere (a method call on it, a graph output) it needs a name.
# Ops whose rows take a Python number where a literal stands: the infix arithmetic, and the ops
# whose catalog arguments are operands (`x > 0`, `torch.where(m, x, 0.0)`, `torch.pow(x, 2)`).
_INFIX = frozenset({"add", "sub", "mul", "div"}) | frozenset(
    op for op, sig in OP_SIGNATURES.items() if any(a.kind == "operand" for a in sig))


def _loop_uses(body: Iterable) -> list[str]:
    out = []
    for item in body:
        if isinstance(item, Loop):
            out += [o for o, _, _ in item.carried] + [r for _, _, r in item.carried] + list(item.exports)
            if item.over is not None:
                out += [item.over.source] + [v for _, v in item.over.stacked]
            out += _loop_uses(item.body)
    return out


def inlined_literals(graph: Graph | None = None, body: Iterable = (), outputs: Iterable[str] = ()) -> dict[str, str]:
    """`const` value → its Python literal, for each constant written into the expressions that use it
    rather than bound to a local: one whose every use is an infix arithmetic operand."""
    if graph is not None:
        body, outputs = graph.nodes, [o.value for o in graph.outputs]
    body = list(body)
    nodes = nodes_of(body)
    out = {n.name: literal(n.attrs["value"]) for n in nodes if n.op == "const"}
    for node in nodes:
        if node.op not in _INFIX:
            for v in node.inputs:
                out.pop(v, None)
    for v in [*outputs, *_loop_uses(body)]:
        out.pop(v, None)
    return out


class Liveness:
    """Positions of a body's nodes and loops, and each value's last use (see the module docstring)."""

    def __init__(self, body: Iterable, outputs: Iterable[str], skip: Collection[str] = ()):
        self.pos: dict[int, int] = {}  # id(node) → position
        self.span: dict[int, tuple[int, int]] = {}  # loop id → (start, end)
        self.last: dict[str, int] = {}
        self._where: dict[str, tuple[int, ...]] = {}  # value → the loops around its definition
        self._uses: list[tuple[str, int, tuple[int, ...]]] = []
        self._n = 0
        self.skip = skip
        self._walk(body, ())
        for value, at, loops in self._uses:
            outer = self._where.get(value, ())
            for lp in loops:  # read inside a loop it was not defined in: needed until that loop ends
                if lp not in outer:
                    at = max(at, self.span[lp][1])
                    break
            self.last[value] = max(self.last.get(value, -1), at)
        self.end = self._n
        for o in outputs:
            self.last[o] = self.end

    def _walk(self, body, loops: tuple[int, ...]) -> None:
        for item in body:
            if isinstance(item, Node):
                if item.name in self.skip:
                    continue
                self.pos[id(item)] = at = self._n
                self._n += 1
                for v in item.inputs:
                    self._uses.append((v, at, loops))
                for v in item.attrs.get("outputs", (item.name,)):
                    self._where[v] = loops
            elif isinstance(item, Loop):
                start = self._n
                self._n += 1
                inside = (*loops, item.id)
                if item.over is not None:  # the slice is the body's; the stacked values are the loop's
                    self._uses.append((item.over.source, start, loops))
                    self._where[item.over.slice] = inside
                    self._where.update({after: loops for after, _ in item.over.stacked})
                for outer, inner, _ in item.carried:
                    self._uses.append((outer, start, loops))
                    self._where[inner] = inside
                self.span[item.id] = (start, -1)
                self._walk(item.body, inside)
                end = self._n
                self._n += 1
                self.span[item.id] = (start, end)
                for _, _, result in item.carried:
                    self._uses.append((result, end, inside))
                for v in item.exports:
                    self._uses.append((v, end, inside))
                for _, v in item.over.stacked if item.over is not None else ():
                    self._uses.append((v, end, inside))


class Locals:
    """Assigns Python names to values while a forward is rendered, in order (see `Liveness`)."""

    def __init__(self, live: Liveness, py: Callable[[str], str], inputs: Iterable[str]):
        self.live, self.py = live, py
        self.names: dict[str, str] = {}
        self.holds: dict[str, str] = {}
        self.reserved: list[tuple[set[str], int, set[str]]] = []  # (carried names, loop end, their results)
        for i in inputs:
            self.names[i] = name = py(i)
            self.holds[name] = i

    def __getitem__(self, value: str) -> str:
        return self.names[value]

    def _free(self, name: str, at: int, value: str) -> bool:
        held = self.holds.get(name)
        if held is not None and self.live.last.get(held, -1) > at:
            return False
        for carried, end, results in self.reserved:  # the body's last line writes a carried name
            if name in carried and self.live.last.get(value, -1) >= end and value not in results:
                return False
        return True

    def define(self, value: str, at: int) -> str:
        base = self.py(_SUFFIX.sub("", value))
        # the right-hand side is evaluated before the assignment, so a value last used by this very
        # node may be overwritten by its result
        name = base if self._free(base, at, value) else self.py(value)
        self.names[value] = name
        self.holds[name] = value
        return name

    def enter(self, loop: Loop) -> list[str]:
        """Bind the loop's carried values; returns the lines that must run before the loop."""
        start, end = self.live.span[loop.id]
        before, carried = [], set()
        for outer, inner, _ in loop.carried:
            name = self.names[outer]
            if self.live.last.get(outer, -1) > start or name in carried:  # still needed as it was: copy it
                name = self.py(inner)
                before.append(f"{name} = {self.names[outer]}")
            self.names[inner] = name
            self.holds[name] = inner
            carried.add(name)
        self.reserved.append((carried, end, {r for _, _, r in loop.carried}))
        return before

    def steps(self, loop: Loop) -> list[str]:
        """A loop over a tensor: a new list local per stacked value, its steps appended in the body."""
        if loop.over is None:
            return []
        return [self.py.fresh(_SUFFIX.sub("", self.py(after)) + "s") for after, _ in loop.over.stacked]

    def leave(self, loop: Loop) -> list[str]:
        """The body's last line (carried values into their locals); afterwards they name the results."""
        self.reserved.pop()
        targets, values = [], []
        for _, inner, result in loop.carried:
            if self.names[inner] != self.names[result]:
                targets.append(self.names[inner])
                values.append(self.names[result])
        for _, inner, result in loop.carried:
            self.names[result] = self.names[inner]
            self.holds[self.names[inner]] = result
        return [f"{', '.join(targets)} = {', '.join(values)}"] if targets else []


def local_names(graph: Graph, py: Callable[[str], str], skip: Collection[str] = ()) -> dict[str, str]:
    """IR value → Python local name for a flat graph (`py` gives each IR name its safe spelling);
    the values in `skip` (inlined literals) are bound to no name and hold none."""
    live = Liveness(graph.nodes, [o.value for o in graph.outputs], skip)
    names = Locals(live, py, [i.name for i in graph.inputs])
    for node in graph.nodes:
        if node.name not in skip:
            names.define(node.name, live.pos[id(node)])
    return names.names
