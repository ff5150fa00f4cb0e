"""`tie_penalty`'s body: λ · Σ_{i<j} ‖w_i − w_j‖² (l2) or λ · Σ_{i<j} Σ|w_i − w_j| (l1) per tie group.

A tie written inside a repeat is one group per copy; written out it would make the file grow with
the count. Groups that differ only in which copy of a repeated layer they read, and that cover
every copy once, are written as one loop over the copies (`for c in self.c: penalty = …`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from tiec.compiler import ir
from tiec.dsl.diagnostics import TieError

from .naming import Namer, literal


def _term(tie: ir.TieGroup, ws: list[str]) -> tuple[list[str], str]:
    if tie.norm not in ("l2", "l1"):
        raise TieError(f"tie group {tie.id}: unknown norm {tie.norm!r} (expected 'l2' or 'l1')", tie.span)
    lam, k = literal(float(tie.strength)), len(ws)
    if k == 2 and tie.norm == "l2":
        return [], f"{lam} * (({ws[0]} - {ws[1]}) ** 2).sum()"
    if k == 2:
        return [], f"{lam} * ({ws[0]} - {ws[1]}).abs().sum()"
    pre = [f"w = torch.stack([{', '.join(ws)}])"]
    if tie.norm == "l2":  # Σ_{i<j} ‖w_i − w_j‖² = k · Σ_i ‖w_i − w̄‖²: linear in k, not quadratic
        return pre, f"{lam} * {k} * ((w - w.mean(0)) ** 2).sum()"
    return pre, f"{lam} * torch.pdist(w.flatten(1), p=1).sum()"


def _pattern(tie: ir.TieGroup, copies: Mapping[str, tuple[int, int]]):
    """(signature, copy index) when every copied member reads the same copy of one loop's layers."""
    parts, index, loop = [], None, None
    for m in tie.members:
        head, *rest = m.param.split(".")
        if head in copies and rest and rest[0].isdigit():
            if index not in (None, rest[0]) or loop not in (None, copies[head][0]):
                return None
            index, loop = rest[0], copies[head][0]
            parts.append((head, "*", *rest[1:], m.transposed))
        else:
            parts.append((m.param, m.transposed))
    if index is None:
        return None
    return (tie.strength, tie.norm, loop, tuple(parts)), int(index)


def penalty_lines(groups: tuple[ir.TieGroup, ...], member: Callable[[str, bool], str], zero: str,
                  copies: Mapping[str, tuple[int, int]] | None = None) -> list[str]:
    """The body of `tie_penalty`; `copies`: instance → (its loop, the loop's count), for loops over copies."""
    if not groups:
        return [f"return {zero}"]
    copies = copies or {}
    found: dict[tuple, list[tuple[int, ir.TieGroup]]] = {}
    for tie in groups:
        p = _pattern(tie, copies)
        if p is not None:
            found.setdefault(p[0], []).append((p[1], tie))
    def count(sig: tuple) -> int:
        head = next(p[0] for p in sig[3] if len(p) > 2)
        return copies[head][1]

    looped = {sig: ties for sig, ties in found.items() if sorted(i for i, _ in ties) == list(range(count(sig)))}
    first = {id(ties[0][1]): sig for sig, ties in looped.items()}
    skip = {id(t) for ties in looped.values() for _, t in ties}
    out, started = [], False
    for tie in groups:
        if id(tie) in first:
            out += [] if started else [f"penalty = {zero}"]
            started = True
            out += _loop(first[id(tie)], looped[first[id(tie)]], member)
            continue
        if id(tie) in skip:
            continue
        names = " ~ ".join(m.param + (".T" if m.transposed else "") for m in tie.members)
        pre, term = _term(tie, [member(m.param, m.transposed) for m in tie.members])
        out += [f"# tie group {tie.id} ({tie.norm}): {names}", *pre]
        out.append(f"penalty = penalty + {term}" if started else f"penalty = {term}")
        started = True
    return [*out, "return penalty"]


def _loop(sig: tuple, ties: list[tuple[int, ir.TieGroup]], member: Callable[[str, bool], str]) -> list[str]:
    """One loop over the copies for the tie groups `ties` (one per copy, alike but for the index)."""
    parts = sig[3]
    heads = list(dict.fromkeys(p[0] for p in parts if len(p) > 2))
    names = Namer({"self", "penalty", "w"})
    var = {h: names.fresh(h) for h in heads}
    probe = ties[0][1]
    ws = []
    for p, m in zip(parts, probe.members):
        if len(p) > 2:
            base = var[p[0]]
            for q in p[2:-1]:
                base = f"{base}[{q}]" if q.isdigit() else f"{base}.{q}"
            ws.append(f"{base}.T" if m.transposed else base)
        else:
            ws.append(member(m.param, m.transposed))
    pre, term = _term(probe, ws)
    its = [f"self.{h}" for h in heads]
    head = f"for {var[heads[0]]} in {its[0]}:" if len(heads) == 1 else \
        f"for {', '.join(var[h] for h in heads)} in zip({', '.join(its)}):"
    label = " ~ ".join(".".join(x for x in p[:-1]) + (".T" if p[-1] else "") for p in parts)
    return [f"# {len(ties)} tie groups ({probe.norm}), one per copy: {label}", head,
            *("    " + x for x in pre), f"    penalty = penalty + {term}"]
