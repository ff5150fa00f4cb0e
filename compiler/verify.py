"""Invariants every pass must keep; tests call `verify` after each pass.

Rule: in each graph, value names are unique identifiers, every input is defined before use, ops
are from the closed set with their required attributes, layer and parameter references exist;
each parameter slot is in at most one share group, whose members agree on shape after their
orientation; tie members exist; types (once inferred) cover every value.
"""
from __future__ import annotations

from . import ir

_REQUIRED_ATTRS = {
    "param": ("param", "transposed"), "const": ("value",), "gelu": ("approximate",), "softmax": ("dim",),
    "log_softmax": ("dim",), "flatten": ("start_dim", "end_dim"), "reshape": ("shape",),
    "transpose": ("dim0", "dim1"), "max_pool2d": ("kernel", "stride", "padding"),
    "avg_pool2d": ("kernel", "stride", "padding"), "mean": ("dim", "keepdim"), "concat": ("dim",),
    "cosine_similarity": ("dim", "eps"),
}


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
        if p.layer not in layers or p.name != f"{p.layer}.{p.slot}":
            raise IRInvariantError(f"{g.name}: parameter {p.name} does not belong to a layer")
    for o in g.outputs:
        if o.value not in defined:
            raise IRInvariantError(f"{g.name}: output {o.name} reads undefined {o.value}")
    if types is not None:
        missing = defined - set(types)
        if missing:
            raise IRInvariantError(f"{g.name}: no type for {sorted(missing)[:5]}")


def verify(program: ir.ProgramIR) -> ir.ProgramIR:
    """Check every invariant; return the program unchanged (so it chains after a pass)."""
    params = {ir.qualify(m, p.name): p for m, g in program.models.items() for p in g.params}
    for name, g in program.models.items():
        _graph(g, program.types.get(name) if program.types else None)
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
