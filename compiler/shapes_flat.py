"""The shapes pass over a flat graph (`infer`, `run`): every node's type by the rules of `shapes`,
a scan's body once for all its steps (`shapes_scan`), and each block input's declared type
checked where the value is made."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from tiec.dsl.diagnostics import TieError, raise_all

from . import ir, shapes
from .shapes import Ctx, T, _any, same
from .shapes_scan import check_carried, scan_dim, stacked_type


def infer(graph: ir.Graph) -> dict[str, T]:
    """Types of every value in one graph; raises TieError at the first mismatch."""
    types: dict[str, T] = {i.name: i.type for i in graph.inputs}
    consts = {n.name: n.attrs["value"] for n in ir.walk_nodes(graph.nodes) if n.op == "const"}
    checks: dict[str, list[ir.Check]] = {}
    for c in graph.checks:
        checks.setdefault(c.value, []).append(c)
    for name in list(types):
        check_declared(types[name], checks.pop(name, []))
    _infer_nodes(graph, graph.nodes, types, consts, checks)
    return types


def _infer_nodes(graph: ir.Graph, nodes, types: dict[str, T], consts: Mapping[str, float], checks) -> None:
    for node in nodes:
        if node.op == "scan":
            _infer_scan(graph, node, types, consts, checks)
            continue
        ctx = Ctx(graph, node, [types[i] for i in node.inputs], consts)
        shapes.DTYPE_RULES.get(node.op, _any)(ctx)  # read at call time: tests swap the table
        types[node.name] = shapes.SHAPE_RULES[node.op](ctx)
        check_declared(types[node.name], checks.pop(node.name, []))


def _infer_scan(graph: ir.Graph, node: ir.Node, types: dict[str, T], consts: Mapping[str, float], checks) -> None:
    a = node.attrs
    source = types[node.inputs[0]]
    dim = scan_dim(source, a["dim"], node.span)
    types[a["slice"]] = T(source.dtype, source.shape[:dim] + source.shape[dim + 1:])
    for state, initial in zip(a["state"], node.inputs[1:]):
        types[state] = types[initial]
    _infer_nodes(graph, a["body"], types, consts, checks)
    finals = [types[s] for s in a["state"]]
    for state, result in zip(a["state"], a["results"]):
        check_carried(state, types[state], types[result], node.span)
    stacked = [stacked_type(types[v], source.shape[dim], dim, node.span) for v in a["stacked"]]
    for name, t in zip(a["outputs"], finals + stacked):
        types[name] = t


def check_declared(actual: T, checks: list[ir.Check]) -> None:
    for c in checks:
        want = c.type
        ok = actual.dtype == want.dtype and len(actual.shape) == len(want.shape) and all(
            same(a, b) for a, b in zip(actual.shape, want.shape))
        if not ok:
            raise TieError(f"this block input must be {want}, but {actual} is passed", c.span,
                           notes=[(c.declared, "the block declares the input here")])


def reshape_targets(graph: ir.Graph) -> ir.Graph:
    """Write reshape targets in ONNX semantics: a symbol standing where the input has it → 0."""
    if not any(n.op == "reshape" for n in ir.walk_nodes(graph.nodes)):
        return graph
    return replace(graph, nodes=_onnx_reshapes(graph.nodes))


def _onnx_reshapes(nodes) -> tuple[ir.Node, ...]:
    out = []
    for n in nodes:
        if n.op == "reshape":
            n = replace(n, attrs=ir.frozen({**n.attrs, "shape": tuple(0 if isinstance(d, str) else d
                                                                      for d in n.attrs["shape"])}))
        elif n.op == "scan":
            n = replace(n, attrs=ir.frozen({**n.attrs, "body": _onnx_reshapes(n.attrs["body"])}))
        out.append(n)
    return tuple(out)


def run(program: ir.ProgramIR) -> ir.ProgramIR:
    types, errors, models = {}, [], {}
    for name, graph in program.models.items():
        try:
            types[name] = ir.frozen(infer(graph))
            models[name] = reshape_targets(graph)
        except TieError as e:
            errors.append(e)
    raise_all(errors)
    return replace(program, models=ir.frozen(models), types=ir.frozen(types))
