"""Invariants every pass must keep; tests call `verify` after each pass.

Rule: in each graph, value names are unique identifiers, every input is defined before use, ops
are from the closed set with their required attributes, layer and parameter references exist;
each parameter slot is in at most one share group, whose members agree on shape after their
orientation; tie members exist; types (once inferred) cover every value.
"""
from __future__ import annotations

from . import ir
from .catalog import FUNCTION_OPS

_REQUIRED_ATTRS = {op: attrs for op, attrs in FUNCTION_OPS.items() if attrs}


class IRInvariantError(AssertionError):
    """A pass produced IR that breaks an invariant: a compiler bug, not a user error."""


def _graph(g: ir.Graph, types) -> None:
    defined = set()
    params = g.param_map()
    layers = {layer.path for layer in g.layers}
    for i in g.inputs:
        if not i.name.isidentifier() or i.name in defined:
            raise IRInvariantError(f"{g.name}: input name {i.name!r} invalid or repeated")
        defined.add(i.name)
    for n in g.nodes:
        if n.op not in ir.OPS:
            raise IRInvariantError(f"{g.name}: node {n.name} has unknown op {n.op}")
        if not n.name.isidentifier() or n.name in defined:
            raise IRInvariantError(f"{g.name}: node name {n.name!r} invalid or defined twice")
        missing = [x for x in n.inputs if x not in defined]
        if missing:
            raise IRInvariantError(f"{g.name}: node {n.name} uses {missing} before definition")
        for key in _REQUIRED_ATTRS.get(n.op, ("layer",) if n.op in ir.LAYER_KINDS else ()):
            if key not in n.attrs:
                raise IRInvariantError(f"{g.name}: node {n.name} ({n.op}) lacks attribute {key!r}")
        if n.op in ir.LAYER_KINDS and (n.attrs["layer"] not in layers or g.layer(n.attrs["layer"]).kind != n.op):
            raise IRInvariantError(f"{g.name}: node {n.name} calls unknown layer {n.attrs['layer']!r}")
        if n.op == "param" and n.attrs["param"] not in params:
            raise IRInvariantError(f"{g.name}: node {n.name} reads unknown parameter {n.attrs['param']!r}")
        defined.add(n.name)
    for p in g.params:
        if p.layer not in layers or p.name != ir.slot_key(p.layer, p.slot):
            raise IRInvariantError(f"{g.name}: parameter {p.name} does not belong to a layer")
    for o in g.outputs:
        if o.value not in defined:
            raise IRInvariantError(f"{g.name}: output {o.name} reads undefined {o.value}")
    if types is not None:
        missing = defined - set(types)
        if missing:
            raise IRInvariantError(f"{g.name}: no type for {sorted(missing)[:5]}")


def _subgraph(sub: ir.Subgraph) -> None:
    """Structured: each value defined once, before use (a loop's carried values at its start)."""
    defined = {i.name for i in sub.inputs}
    names = sub.instance_map
    for inst in sub.instances:  # a list's children: `name.0 … name.{k-1}`, then at most one appended child
        if inst.layer is None and inst.block is None:
            indices = [n.rpartition(".")[2] for n in inst.items]
            if any(n not in names or n.rpartition(".")[0] != inst.name for n in inst.items) \
                    or indices != [str(i) for i in range(len(indices))] \
                    or any(names[n].appended for n in inst.items[:-1]):
                raise IRInvariantError(f"{sub.key}: list {inst.name!r} has children {list(inst.items)}")
        if inst.appended and len(inst.loops) != 1:
            raise IRInvariantError(f"{sub.key}: appended child {inst.name!r} is not in exactly one repeat")

    def walk(body) -> None:
        for item in body:
            if isinstance(item, ir.Decl) and item.name not in names:
                raise IRInvariantError(f"{sub.key}: declaration of unknown instance {item.name!r}")
            if isinstance(item, ir.Loop):
                for outer, inner, _ in item.carried:
                    if outer not in defined or inner in defined:
                        raise IRInvariantError(f"{sub.key}: loop {item.id} carries {outer!r} badly")
                    defined.add(inner)
                walk(item.body)
                for _, _, result in item.carried:
                    if result not in defined:
                        raise IRInvariantError(f"{sub.key}: loop {item.id} carries undefined {result!r}")
            elif isinstance(item, ir.Node):
                if item.op not in ir.OPS:
                    raise IRInvariantError(f"{sub.key}: node {item.name} has unknown op {item.op}")
                missing = [x for x in item.inputs if x not in defined]
                if missing:
                    raise IRInvariantError(f"{sub.key}: node {item.name} uses {missing} before definition")
                for key in ("layer", "param", "instance"):
                    if key in item.attrs and item.attrs[key].split(".")[0] not in names:
                        raise IRInvariantError(f"{sub.key}: node {item.name} refers to unknown {item.attrs[key]!r}")
                for out in item.attrs.get("outputs", (item.name,)):
                    if out in defined:
                        raise IRInvariantError(f"{sub.key}: value {out!r} is defined twice")
                    defined.add(out)

    walk(sub.body)
    for o in sub.outputs:
        if o.value not in defined:
            raise IRInvariantError(f"{sub.key}: output {o.name} reads undefined {o.value}")


def verify(program: ir.ProgramIR) -> ir.ProgramIR:
    """Check every invariant; return the program unchanged (so it chains after a pass). A flat
    graph is checked once it has been lowered (see `ir.FlatModels`)."""
    wanted = {m.param for g in (*program.share_groups, *program.tie_groups) for m in g.members}
    local: dict[str, set[str]] = {}
    for w in wanted:
        m, name = ir.split(w)
        local.setdefault(m, set()).add(name)
    params = {ir.qualify(m, p.name): p for m, names in local.items() if m in program.models
              for p in ir.declared_params(program, m) if p.name in names}
    for sub in [*program.structure.values(), *program.blocks.values()]:
        _subgraph(sub)
    lazy = isinstance(program.models, ir.FlatModels)
    for name in program.models:
        if lazy and not program.models.lowered(name):
            continue
        g = program.models[name]
        types = program.types if program.types and (not isinstance(program.types, ir.FlatTypes)) else None
        _graph(g, types.get(name) if types else None)
    seen: set[str] = set()
    for group in program.share_groups:
        canon = params[group.members[0].param]
        if group.members[0].transposed:
            raise IRInvariantError(f"group {group.id}: canonical member is transposed")
        for m in group.members:
            if m.param in seen:
                raise IRInvariantError(f"{m.param} is in two share groups")
            seen.add(m.param)
            shape = tuple(reversed(params[m.param].shape)) if m.transposed else params[m.param].shape
            if shape != canon.shape:
                raise IRInvariantError(f"group {group.id}: {m.param} disagrees with its canonical's shape")
    for tie in program.tie_groups:
        for m in tie.members:
            if m.param not in params:
                raise IRInvariantError(f"tie {tie.id} names unknown parameter {m.param}")
    return program
