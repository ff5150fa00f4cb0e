"""Share and tie statements → requests over qualified parameter slots.

Rule: every target after the first is matched slot by slot against the first (`refs.pair_up`);
a share pairs each slot with its counterpart (a slot is never shared with itself), a tie makes
one request per slot holding all its counterparts. Orientation is relative to the first target.
Used alike inside models (every target in one model) and at top level (targets across models).
"""
from __future__ import annotations

import math

from tiec.dsl.diagnostics import Span, TieError

from . import ir
from .refs import Target, pair_up


def share_requests(targets: list[tuple[str, Target]], span: Span) -> list[ir.ShareRequest]:
    """`targets`: (model, target) pairs; the first is shared with each of the others."""
    (ma, a), out = targets[0], []
    for mb, b in targets[1:]:
        for pa, pb, transposed in pair_up(a, b, "share"):
            if (ma, pa) == (mb, pb):
                raise TieError(f"'{b.label}' is shared with itself", b.span)
            out.append(ir.ShareRequest(ir.qualify(ma, pa), ir.qualify(mb, pb), transposed, span, a.span, b.span))
    return out


def tie_requests(targets: list[tuple[str, Target]], strength: float, norm: str, span: Span,
                 strength_span: Span) -> list[ir.TieRequest]:
    """One request per slot, λ · Σ_{i<j} over the counterparts of that slot in every target."""
    if not (math.isfinite(strength) and strength >= 0):  # nan passes `strength < 0`
        raise TieError(f"tie strength must be a finite number ≥ 0, got {strength}", strength_span)
    (m0, t0) = targets[0]
    columns = [(mb, pair_up(t0, t, "tie"), t) for mb, t in targets[1:]]
    out = []
    for k in range(len(columns[0][1]) if columns else 0):
        members = [ir.Member(ir.qualify(m0, columns[0][1][k][0]), False, t0.span)]
        members += [ir.Member(ir.qualify(mb, col[k][1]), col[k][2], t.span) for mb, col, t in columns]
        out.append(ir.TieRequest(float(strength), norm, tuple(members), span))
    return out
