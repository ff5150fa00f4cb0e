"""The module tree a hand-written PyTorch model would have, from the IR's dotted layer paths.

A path component that is a number makes its parent an `nn.ModuleList` (when its siblings are
0 … n-1); any other inner component is a bare `nn.Module()` container; leaves are the layers.
So `fc1` → `self.fc1`, `tower.conv1` → `self.tower.conv1`, `blk.3.up` → `self.blk[3].up`,
and the state-dict keys are the IR's parameter names, letter for letter.
"""
from __future__ import annotations

import keyword
from collections.abc import Callable
from dataclasses import dataclass, field

from tiec.compiler.catalog import RESERVED_MEMBERS, reserved_member
from tiec.compiler.ir import Graph, Layer
from tiec.dsl.diagnostics import TieError

from .naming import literal

# Names a submodule cannot take: nn.Module refuses them ("attribute 'forward' already exists"). The
# language reserves them (`catalog.RESERVED_MEMBERS`); the emitted classes add a few of their own.
MODULE_ATTRS = RESERVED_MEMBERS | {"owner"}


@dataclass
class _Node:
    name: str
    layer: Layer | None = None
    children: dict[str, _Node] = field(default_factory=dict)

    is_list: bool = False  # children are 0 … n-1: an nn.ModuleList (set once the tree is built)

    def ordered(self) -> list[tuple[str, _Node]]:
        if self.is_list:
            return sorted(self.children.items(), key=lambda item: int(item[0]))
        return list(self.children.items())


def _child(parent: str, name: str, in_list: bool) -> str:
    if in_list:
        return f"{parent}[{name}]"
    if name.isidentifier() and not keyword.iskeyword(name):
        return f"{parent}.{name}"
    return f"getattr({parent}, {literal(name)})"


def _assign(parent: str, name: str, in_list: bool, value: str) -> tuple[str, str]:
    if in_list or name.isidentifier() and not keyword.iskeyword(name):
        return _child(parent, name, in_list), value
    return f"setattr({parent}, {literal(name)}, {value})", ""


class ModuleTree:
    """Where each layer lives (`expr(path)`) and the constructor lines that build the tree."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.root = _Node("")
        for layer in graph.layers:
            node = self.root
            for part in layer.path.split("."):
                node = node.children.setdefault(part, _Node(part))
            if node.layer is not None:
                raise TieError(f"layer path '{layer.path}' is declared twice in model {graph.name}", layer.span)
            node.layer = layer
        self._mark_lists(self.root)
        self._check(self.root, "")

    def _mark_lists(self, node: _Node) -> None:
        node.is_list = bool(node.children) and set(node.children) == {str(i) for i in range(len(node.children))}
        for child in node.children.values():
            self._mark_lists(child)

    def _check(self, node: _Node, prefix: str) -> None:
        for name, child in node.children.items():
            path = f"{prefix}{name}"
            if child.layer is not None and child.children:
                raise TieError(f"'{path}' is a layer and also holds layers {sorted(child.children)}", child.layer.span)
            if not node.is_list and (name in MODULE_ATTRS or reserved_member(name)):
                span = self.graph.layers[0].span if child.layer is None else child.layer.span
                raise TieError(
                    f"layer name '{name}' (in '{path}') is an nn.Module attribute; PyTorch cannot hold a submodule"
                    " by that name",
                    span,
                    hint=f"rename it, e.g. '{name}_layer'",
                )
            self._check(child, f"{path}.")

    def expr(self, path: str, base: str = "self") -> str:
        """The expression for the module at `path` (a layer or container), from `base`."""
        node, out = self.root, base
        for part in path.split("."):
            out = _child(out, part, node.is_list)
            node = node.children[part]
        return out

    def lines(self, ctor: Callable[[Layer], str], base: str = "self") -> list[tuple[str, str]]:
        """(target, value) pairs that build the tree; a setattr(...) line has an empty value."""
        out: list[tuple[str, str]] = []
        self._build(self.root, base, ctor, out)
        return out

    def _build(self, node: _Node, expr: str, ctor: Callable[[Layer], str], out: list) -> None:
        for name, child in node.ordered():
            if not node.is_list:
                value = ctor(child.layer) if child.layer is not None else self._container(child, ctor)
                out.append(_assign(expr, name, False, value))
            if child.children:
                self._build(child, _child(expr, name, node.is_list), ctor, out)

    def _container(self, node: _Node, ctor: Callable[[Layer], str]) -> str:
        if not node.is_list:
            return "nn.Module()"
        items = [ctor(c.layer) if c.layer is not None else self._container(c, ctor) for _, c in node.ordered()]
        if len(set(items)) == 1:
            return f"nn.ModuleList([{items[0]} for _ in range({len(items)})])"
        return f"nn.ModuleList([{', '.join(items)}])"
