"""Share and tie statements and annotations inside a definition → requests over its local names.

Rule: a reference is resolved in the scope where it is written (`refs.resolve`); an index into a
repeat's copies is noted, so that the emitted constructor can require that many copies; a tie's
strength is a configuration value, the initial λ of the module's buffer; an `anchor(…)` member is
kept as the checkpoint key it names. Requests carry the local qualifier
`LOCAL`: `lower` restates them for every copy of the definition.
"""
from __future__ import annotations

from tiec.dsl import ast
from tiec.dsl.diagnostics import Span, TieError, did_you_mean

from . import ir
from .config import coerce, evaluate
from .refs import Copies, Instance, Items, Scope, Target, resolve
from .relations import share_requests, tie_requests

LOCAL = ""  # the qualifier of a subgraph's own requests: `lower` re-qualifies them per copy


class Relating:
    """The sharing and tying half of `elaborate.SubgraphElaborator`."""

    def target(self, ref: ast.Ref, scope: Scope) -> Target:
        self.note_indices(ref, scope)
        return resolve(ref, scope, self.index, scope.config)

    def note_indices(self, ref: ast.Ref, scope: Scope):
        """An index fixes which copy is meant: the constructor must have that many copies."""
        for part in ref.parts:
            if not isinstance(part, str):
                self.structural |= evaluate(part, scope.config, "an index").deps
        head = scope.get(ref.parts[0]) if isinstance(ref.parts[0], str) else None
        if isinstance(head, Copies) and len(ref.parts) > 1 and not isinstance(ref.parts[1], str):
            i = coerce(evaluate(ref.parts[1], scope.config, "an index"), "int", ref.parts[1].span, "index").value
            if 0 <= i < head.count:
                self.counts.append((head.path, i, head.src))
        if isinstance(head, Items) and len(ref.parts) > 1 and not isinstance(ref.parts[1], str):
            self.note_list_index(head, coerce(evaluate(ref.parts[1], scope.config, "an index"), "int",
                                              ref.parts[1].span, "index").value)

    def annotate(self, ann, inst: Instance, scope: Scope, stmt: ast.Assign, shares: list, ties: list):
        own = Target({n[len(inst.path) + 1:]: n for n in self.index.under.get(inst.path, [])}, False,
                     stmt.name_span, stmt.name)
        if inst.kind == "Parameter":  # a free parameter is its own one slot
            own = Target({"": inst.path}, False, stmt.name_span, stmt.name)
        if isinstance(ann, ast.ShareAnn) and ann.slot is not None:
            if ann.slot not in own.params:
                raise TieError(f"'{stmt.name}' has no parameter '{ann.slot}'", ann.span,
                               hint=did_you_mean(ann.slot, own.params) or f"its parameters: {', '.join(own.params)}")
            own = Target({"": own.params[ann.slot]}, False, stmt.name_span, f"{stmt.name}.{ann.slot}")
        other = ann.ref if isinstance(ann.ref, ast.AnchorRef) else self.target(ann.ref, scope)
        if isinstance(ann, ast.ShareAnn):
            shares += share_requests([(LOCAL, own), (LOCAL, other)], ann.span)
        else:
            ties += self.tie([own, other], ann, scope)

    def share_refs(self, refs, scope: Scope, span: Span) -> list[ir.ShareRequest]:
        targets = [(LOCAL, self.target(r, scope)) for r in refs]
        return share_requests(targets, span)

    def tie_refs(self, stmt, refs, scope: Scope) -> list[ir.TieRequest]:
        return self.tie([r if isinstance(r, ast.AnchorRef) else self.target(r, scope) for r in refs], stmt, scope)

    def tie(self, targets: list[Target | ast.AnchorRef], stmt, scope: Scope) -> list[ir.TieRequest]:
        strength = coerce(evaluate(stmt.strength, scope.config, "a tie strength"), "float", stmt.strength.span, "λ")
        self.structural |= strength.deps  # the initial value of the λ buffer
        return tie_requests([(LOCAL, t) for t in targets], strength.value, stmt.norm, stmt.span, stmt.strength.span,
                            stmt.kind)


