"""Share and tie statements → requests over qualified parameter slots.

Rule: every target after the first is matched slot by slot against the first (`refs.pair_up`);
a share pairs each slot with its counterpart (a slot is never shared with itself), a tie makes
one request per slot holding all its counterparts. Orientation is relative to the first target.
Used alike inside models (every target in one model) and at top level (targets across models).
"""
from __future__ import annotations

import math

from tiec.dsl import ast
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


MAX_ANCHOR_KEY = 1024  # characters of a checkpoint key named by `anchor("…")`


def tie_requests(targets: list[tuple[str, Target | ast.AnchorRef]], strength: float, norm: str, span: Span,
                 strength_span: Span, kind: str = "pairwise") -> list[ir.TieRequest]:
    """One request per slot of the first target, holding that slot's counterpart in every other
    target; an anchor stands for the checkpoint tensor under its key (a layer's slots under
    `key.slot`), or under the member's own key (`anchor()`)."""
    if not (math.isfinite(strength) and strength >= 0):  # nan passes `strength < 0`
        raise TieError(f"tie strength must be a finite number ≥ 0, got {strength}", strength_span)
    (m0, t0) = targets[0]
    anchors = [t for _, t in targets[1:] if isinstance(t, ast.AnchorRef)]
    for a in anchors:
        if a.key is not None and not (0 < len(a.key) <= MAX_ANCHOR_KEY and a.key.isprintable()):
            raise TieError(f"an anchor's key must be 1 to {MAX_ANCHOR_KEY} printable characters", a.span,
                           hint='name the checkpoint entry, e.g. anchor("encoder.fc.weight"), or anchor() for the '
                                "member's own key")
    columns = [(mb, pair_up(t0, t, "tie"), t) for mb, t in targets[1:] if isinstance(t, Target)]
    out = []
    for k, (slot, name) in enumerate(t0.params.items()):
        members = [ir.Member(ir.qualify(m0, name), False, t0.span)]
        members += [ir.Member(ir.qualify(mb, col[k][1]), col[k][2], t.span) for mb, col, t in columns]
        fixed = tuple(ir.Anchor(None if a.key is None else a.key if not slot else f"{a.key}.{slot}", a.span)
                      for a in anchors)
        out.append(ir.TieRequest(float(strength), norm, tuple(members), span, kind, fixed))
    return out
