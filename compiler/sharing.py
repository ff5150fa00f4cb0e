"""Solve share requests into groups of slots holding one tensor, and tie requests into ties.

Rule: share requests are edges `a = b` or `a = b.T` between parameter slots (a networkx graph,
each edge labelled with its orientation). Each connected component is one group; its canonical
member is the first slot in source order, and every member's orientation relative to it is the
XOR of the labels along any path. Two paths that disagree are a contradiction (`a = b.T` and
`a = b`) and an error, as is a member whose shape, after its orientation, differs from the
canonical's. Ties keep their members; a tie whose members are all one tensor is a warning.
"""
from __future__ import annotations

from collections import deque
from dataclasses import replace

import networkx as nx
from tiec.dsl.diagnostics import TieError, TieWarning, raise_all

from . import ir
from .catalog import LAYERS


def _shape(p: ir.Param, transposed: bool) -> tuple[int, ...]:
    return tuple(reversed(p.shape)) if transposed else p.shape


def share_graph(program: ir.ProgramIR) -> nx.Graph:
    """The share graph: one node per requested slot, edges labelled `transposed` (a = b.T)."""
    g = nx.Graph()
    for r in program.share_requests:
        if g.has_edge(r.a, r.b):
            prev = g.edges[r.a, r.b]["request"]
            if prev.transposed != r.transposed:
                raise TieError(
                    f"contradictory sharing: '{r.a}' is shared with '{r.b}' both transposed and not",
                    r.span, notes=[(prev.span, "the other share is here")],
                    hint="a tensor cannot equal another and its transpose unless forced symmetric; drop one")
            continue
        g.add_edge(r.a, r.b, request=r)
    return g


def run(program: ir.ProgramIR) -> ir.ProgramIR:
    wanted = {r.a for r in program.share_requests} | {r.b for r in program.share_requests} | \
        {m.param for t in program.tie_requests for m in t.members}
    params, order, at = {}, {}, 0  # the slots a request names, and their place in declaration order
    for m in program.models:
        for p in ir.declared_params(program, m):
            q = ir.qualify(m, p.name)
            if q in wanted:
                params[q], order[q] = p, at
            at += 1
    g = share_graph(program)
    errors: list[TieError] = []
    groups: list[ir.ShareGroup] = []
    orient_of: dict[str, tuple[int, bool]] = {}
    for component in sorted(nx.connected_components(g), key=lambda c: min(order[n] for n in c)):
        root = min(component, key=order.__getitem__)
        orient, error = _orient(g, root)
        if error:
            errors.append(error)
            continue
        gid = len(groups) + 1
        members = sorted(component, key=order.__getitem__)
        canon = params[root]
        group_errors = []
        for m in members:
            p = params[m]
            if _shape(p, orient[m]) != canon.shape or p.dtype != canon.dtype:
                req = next(iter(g.edges[m, nb]["request"] for nb in g.adj[m]))
                where = req.b_span if m == req.b else req.span  # the reference naming the misfit
                view = f"{m}.T" if orient[m] else m
                if _shape(p, orient[m]) == canon.shape:  # one tensor has one dtype: never cast to make it fit
                    group_errors.append(TieError(
                        f"cannot share '{view}' ({p.dtype}) with '{root}' ({canon.dtype}): dtypes differ", where,
                        notes=[(p.span, f"'{m}' is declared here as {p.dtype}"),
                               (canon.span, f"'{root}' is declared here as {canon.dtype}")],
                        hint=f'declare both with one dtype: dtype="{canon.dtype}"'))
                    continue
                group_errors.append(TieError(
                    f"cannot share '{view}' {list(_shape(p, orient[m]))} with '{root}' {list(canon.shape)}: "
                    "shapes differ", where,
                    notes=[(p.span, f"'{m}' is declared here with shape {list(p.shape)}"),
                           (canon.span, f"'{root}' is declared here with shape {list(canon.shape)}")],
                    hint="shared parameters must have the same shape (use .T for a transposed view of a 2-D one)"))
        group_errors += _untransposable(program, members, orient, params, g)
        if group_errors:
            errors += group_errors[:1]
            continue
        groups.append(ir.ShareGroup(gid, tuple(ir.Member(m, orient[m], params[m].span) for m in members)))
        for m in members:
            orient_of[m] = (gid, orient[m])
    ties, warnings = _ties(program, params, orient_of, errors)
    raise_all(errors)
    return replace(program, share_groups=tuple(groups), tie_groups=tuple(ties),
                   warnings=program.warnings + tuple(warnings))


def _untransposable(program, members, orient, params, g) -> list[TieError]:
    """A member read transposed needs a layer that can read its slot so (`LayerSpec.transposable`)."""
    out = []
    for m in members:
        if not orient[m]:
            continue
        model = ir.split(m)[0]
        p = params[m]
        kind = next(x.kind for x in ir.declared_layers(program, model) if x.path == p.layer)
        if p.slot not in LAYERS[kind].transposable:
            req = next(iter(g.edges[m, nb]["request"] for nb in g.adj[m]))
            out.append(TieError(
                f"'{m}' would be read transposed, but a {kind} layer reads its '{p.slot}' only as stored",
                req.b_span if m == req.b else req.a_span,
                notes=[(p.span, f"'{m}' is declared here")],
                hint="share it without '.T', or declare this layer before the others in the group so that its "
                     "parameter is the group's canonical tensor (the first in source order)"))
    return out


def _orient(g: nx.Graph, root: str) -> tuple[dict[str, bool], TieError | None]:
    orient = {root: False}
    queue = deque([root])
    while queue:
        u = queue.popleft()
        for v, data in g.adj[u].items():
            want = orient[u] != data["request"].transposed
            if v not in orient:
                orient[v] = want
                queue.append(v)
            elif orient[v] != want:
                r = data["request"]
                return orient, TieError(
                    f"contradictory sharing: '{r.a}' and '{r.b}' would be both equal and transposed", r.span,
                    notes=[(r.a_span, f"'{r.a}' is here"), (r.b_span, f"'{r.b}' is here")],
                    hint="the shares around this group disagree on orientation (a = b.T together with a = b)")
    return orient, None


def _ties(program, params, orient_of, errors):
    ties, warnings = [], []
    for i, req in enumerate(program.tie_requests, start=1):
        first = params[req.members[0].param]
        ok = True
        for m in req.members[1:]:
            p = params[m.param]
            if _shape(p, m.transposed) != first.shape:
                errors.append(TieError(
                    f"cannot tie '{m.param}' {list(_shape(p, m.transposed))} to '{req.members[0].param}' "
                    f"{list(first.shape)}: shapes differ", m.span,
                    notes=[(p.span, f"'{m.param}' is declared here"), (first.span, f"'{req.members[0].param}' here")]))
                ok = False
                break
        if not ok:
            continue
        tensors = {(orient_of.get(m.param, (m.param, False))[0],
                    orient_of.get(m.param, (m.param, False))[1] != m.transposed) for m in req.members}
        if len(tensors) == 1 and not req.anchors:
            warnings.append(TieWarning(
                f"tie between '{req.members[0].param}' and '{req.members[1].param}' has no effect: "
                "they are one shared tensor, so its penalty is always 0", req.span))
        if req.anchors and len({ir.split(m.param)[0] for m in req.members}) > 1:
            errors.append(TieError("a tie with an anchor ties parameters of one model", req.span,
                                   hint="write one tie per model, each with its anchor"))
            continue
        own_key = ir.split(req.members[0].param)[1]  # `anchor()`: the first member's own state-dict key
        anchors = tuple(a if a.key is not None else replace(a, key=own_key) for a in req.anchors)
        ties.append(ir.TieGroup(i, req.strength, req.norm, req.members, req.span, req.kind, anchors))
    return ties, warnings
