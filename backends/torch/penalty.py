"""`tie_penalty` and the tie state a class holds: λ per group in a buffer, anchors as buffers.

Per tie group, with members r_1 … r_k (anchors, fixed tensors from a checkpoint, count as members
that are not trained): pairwise `l2` is λ · Σ_{i<j} ‖r_i − r_j‖², pairwise `l1` λ · Σ_{i<j} Σ|r_i − r_j|;
`centroid` `l2` is λ · Σ_i ‖r_i − r̄‖² and `centroid` `l1` λ · Σ_i Σ|r_i − r̄| (r̄ the members' mean).
λ is read from a non-persistent buffer (`tie_strength`, one entry per group, in emission order), so
`set_tie_strength` changes it on the live module, under torch.compile too, without recompiling.
Each anchor is a non-persistent buffer filled by `load_anchors(state)`; `tie_penalty` refuses to
run before that, rather than pulling weights toward zeros.

A tie written inside a repeat is one group per copy; written out it would make the file grow with
the count. Groups that differ only in which copy of a repeated layer they read, and that cover
every copy once, are written as one loop over the copies (`for c in self.c: penalty = …`).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from tiec.compiler import ir
from tiec.dsl.diagnostics import TieError

from .naming import Namer, literal

TIE_METHODS = ("tie_penalty", "tie_strengths", "set_tie_strength", "load_anchors")


@dataclass(frozen=True)
class TieAttrs:
    """The attribute names a class gives its tie state: the λ buffer of the groups written out, one λ
    buffer per loop over copies (by the index of the loop's first group in emission order), the
    anchors-loaded flag, and the anchor buffers."""

    strength: str
    loaded: str
    anchors: Mapping[str, str]  # checkpoint key → buffer attribute
    loops: Mapping[int, str] = field(default_factory=dict)


def tie_attrs(groups: Iterable[ir.TieGroup], taken: Iterable[str],
              copies: Mapping[str, tuple[int, int]] | None = None) -> TieAttrs:
    """Deterministic names, clear of `taken` (the class's submodules): the same groups give the same names."""
    groups = tuple(groups)
    names = Namer(set(taken) | set(TIE_METHODS))
    strength, loaded = names.fresh("tie_strength"), names.fresh("anchors_loaded")
    keys = dict.fromkeys(a.key for g in groups for a in g.anchors)
    anchors = {k: names.fresh(f"anchor_{i}") for i, k in enumerate(keys)}
    loops = {at: names.fresh(f"tie_strength_{n + 1}") for n, at in enumerate(order(groups, copies)[1])}
    return TieAttrs(strength, loaded, anchors, loops)


def _term(tie: ir.TieGroup, ws: list[str], lam: str) -> tuple[list[str], str]:
    """(lines before, the term) of one group. Fused losses read each tensor once: `F.mse_loss` and
    `F.l1_loss` with `reduction="sum"` are exactly Σ(a − b)² and Σ|a − b|."""
    if tie.norm not in ("l2", "l1"):
        raise TieError(f"tie group {tie.id}: unknown norm {tie.norm!r} (expected 'l2' or 'l1')", tie.span)
    k = len(ws)
    loss = "F.mse_loss" if tie.norm == "l2" else "F.l1_loss"
    if k == 2 and tie.kind == "pairwise":
        return [], f"{lam} * {loss}({ws[0]}, {ws[1]}, reduction=\"sum\")"
    if tie.norm == "l2":  # Σ_{i<j} ‖w_i − w_j‖² = k · Σ_i ‖w_i − w̄‖²: linear in k, not quadratic
        pre = [f"ws = ({', '.join(ws)})",
               f"mean = sum(w.detach() for w in ws) / {k}  # Σ_i (w_i − w̄) = 0: the mean adds no gradient"]
        scale = f"{lam} * {k}" if tie.kind == "pairwise" else lam
        return pre, f"{scale} * sum(F.mse_loss(w, mean, reduction=\"sum\") for w in ws)"
    pre = [f"w = torch.stack([{', '.join(ws)}])"]
    if tie.kind == "centroid":  # under l1 the mean's own gradient does not cancel: it stays attached
        return pre, f"{lam} * (w - w.mean(0)).abs().sum()"
    return pre, f"{lam} * torch.pdist(w.flatten(1), p=1).sum()"


def _pattern(tie: ir.TieGroup, copies: Mapping[str, tuple[int, int]]):
    """(signature, copy index) when every copied member reads the same copy of one loop's layers."""
    if tie.anchors:  # each copy's anchor is its own buffer: written out
        return None
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
    return (tie.strength, tie.norm, tie.kind, loop, tuple(parts)), int(index)


def order(groups: tuple[ir.TieGroup, ...], copies: Mapping[str, tuple[int, int]] | None = None
          ) -> tuple[list[ir.TieGroup], dict[int, tuple]]:
    """The groups in emission order (a loop's groups together, by copy), and for each group that opens
    a loop, its signature; `copies`: instance → (its loop, the loop's count)."""
    copies = copies or {}
    found: dict[tuple, list[tuple[int, ir.TieGroup]]] = {}
    for tie in groups:
        p = _pattern(tie, copies)
        if p is not None:
            found.setdefault(p[0], []).append((p[1], tie))

    def count(sig: tuple) -> int:
        head = next(p[0] for p in sig[4] if len(p) > 2)
        return copies[head][1]

    def progression(ties: list[tuple[int, ir.TieGroup]]) -> bool:  # ids a, a + s, a + 2s, …: a range
        ids = [t.id for _, t in sorted(ties, key=lambda t: t[0])]
        return len(ids) < 2 or ids[1] > ids[0] and all(b - a == ids[1] - ids[0] for a, b in itertools.pairwise(ids))

    looped = {sig: sorted(ties, key=lambda t: t[0]) for sig, ties in found.items()
              if sorted(i for i, _ in ties) == list(range(count(sig))) and progression(ties)}
    first = {id(ties[0][1]): sig for sig, ties in looped.items()}
    skip = {id(t) for ties in looped.values() for _, t in ties}
    out, opens = [], {}
    for tie in groups:
        if id(tie) in first:
            sig = first[id(tie)]
            opens[len(out)] = (sig, [t for _, t in looped[sig]])
            out += [t for _, t in looped[sig]]
        elif id(tie) not in skip:
            out.append(tie)
    return out, opens


def penalty_lines(groups: tuple[ir.TieGroup, ...], member: Callable[[str, bool], str], zero: str,
                  copies: Mapping[str, tuple[int, int]] | None = None, attrs: TieAttrs | None = None,
                  anchor: Callable[[ir.TieGroup, str], str] | None = None,
                  loaded: list[str] | None = None) -> list[str]:
    """The body of `tie_penalty`. `anchor(group, key)`: the expression of an anchor buffer (default:
    this class's own); `loaded`: the flags that must be set before the penalty runs."""
    if not groups:
        return [f"return {zero}"]
    attrs = attrs or tie_attrs(groups, (), copies)
    anchor = anchor or (lambda _g, key: f"self.{attrs.anchors[key]}")
    emitted, opens = order(groups, copies)
    out = []
    for flag in loaded if loaded is not None else ([f"self.{attrs.loaded}"] if attrs.anchors else []):
        out += [f"if not {flag}:",
                '    raise RuntimeError("tie anchors are not loaded: call load_anchors(state) with the checkpoint")']
    started, i, single = False, 0, 0
    while i < len(emitted):
        tie = emitted[i]
        if i in opens:
            sig, ties = opens[i]
            out += [] if started else [f"penalty = {zero}"]
            out += _loop(sig, ties, member, f"self.{attrs.loops[i]}")
            started = True
            i += len(ties)
            continue
        names = " ~ ".join([m.param + (".T" if m.transposed else "") for m in tie.members] +
                           [f"anchor({literal(a.key)})" for a in tie.anchors])
        ws = [member(m.param, m.transposed) for m in tie.members] + [anchor(tie, a.key) for a in tie.anchors]
        pre, term = _term(tie, ws, f"self.{attrs.strength}[{single}]")
        kind = "" if tie.kind == "pairwise" else f", {tie.kind}"
        out += [f"# tie group {tie.id} ({tie.norm}{kind}): {names}", *pre]
        out.append(f"penalty = penalty + {term}" if started else f"penalty = {term}")
        started = True
        i += 1
        single += 1
    return [*out, "return penalty"]


def _loop(sig: tuple, ties: list[ir.TieGroup], member: Callable[[str, bool], str], strength: str) -> list[str]:
    """One loop over the copies for the tie groups `ties` (one per copy, alike but for the index)."""
    parts = sig[4]
    heads = list(dict.fromkeys(p[0] for p in parts if len(p) > 2))
    names = Namer({"self", "penalty", "w", "ws", "mean", "i", "F", "torch"})
    var = {h: names.fresh(h) for h in heads}
    probe = ties[0]
    ws = []
    for p, m in zip(parts, probe.members):
        if len(p) > 2:
            base = var[p[0]]
            for q in p[2:-1]:
                base = f"{base}[{q}]" if q.isdigit() else f"{base}.{q}"
            ws.append(f"{base}.T" if m.transposed else base)
        else:
            ws.append(member(m.param, m.transposed))
    pre, term = _term(probe, ws, f"{strength}[i]")
    its = [f"self.{h}" for h in heads]
    head = f"for i, {var[heads[0]]} in enumerate({its[0]}):" if len(heads) == 1 else \
        f"for i, ({', '.join(var[h] for h in heads)}) in enumerate(zip({', '.join(its)})):"
    label = " ~ ".join(".".join(x for x in p[:-1]) + (".T" if p[-1] else "") for p in parts)
    kind = "" if probe.kind == "pairwise" else f", {probe.kind}"
    return [f"# {len(ties)} tie groups ({probe.norm}{kind}), one per copy: {label}", head,
            *("    " + x for x in pre), f"    penalty = penalty + {term}"]


def _segments(groups, copies) -> list[tuple[str | None, str, str]]:
    """(loop head or None, ids expression, λ values expression) per λ buffer: the groups written out,
    then each loop, whose length follows its copies (`len(self.c)`) as the constructor builds them."""
    emitted, opens = order(groups, copies)
    inside = {id(t) for _, ties in opens.values() for t in ties}
    singles = [t for t in emitted if id(t) not in inside]
    out = [(None, literal(tuple(t.id for t in singles)),
            f"torch.tensor([{', '.join(literal(float(t.strength)) for t in singles)}])")] if singles else []
    for at, (sig, ties) in opens.items():
        head = next(p[0] for p in sig[4] if len(p) > 2)
        n, first = f"len(self.{head})", ties[0].id
        step = ties[1].id - first if len(ties) > 1 else 1
        out.append((at, f"range({first}, {first} + {step} * {n}, {step})" if step != 1 else
                    f"range({first}, {first} + {n})", f"torch.full(({n},), {literal(float(sig[0]))})"))
    return out


def init_lines(groups: tuple[ir.TieGroup, ...], attrs: TieAttrs, member: Callable[[str, bool], str],
               copies: Mapping[str, tuple[int, int]] | None = None) -> list[str]:
    """`__init__` lines: the λ buffers and one zero buffer per anchor, not yet loaded, made like the
    first member it is matched with (`torch.zeros_like`: its shape, dtype and device)."""
    if not groups:
        return []
    out = []
    for at, _, values in _segments(groups, copies):
        name = attrs.strength if at is None else attrs.loops[at]
        what = "λ per tie group written out" if at is None else "λ per copy of a tie written in a repeat"
        out.append(f"self.register_buffer({literal(name)}, {values}, persistent=False)  # {what}")
    if attrs.anchors:
        emitted, _ = order(groups, copies)
        first = {}
        for t in emitted:
            for a in t.anchors:
                first.setdefault(a.key, t.members[0].param)
        for key, name in attrs.anchors.items():
            like = member(first[key], False)
            out.append(f"self.register_buffer({literal(name)}, torch.zeros_like({like}), persistent=False)"
                       f"  # anchor {literal(key)}: load_anchors fills it")
        out.append(f"self.{attrs.loaded} = False")
    return out


def method_lines(groups: tuple[ir.TieGroup, ...], attrs: TieAttrs, copies: Mapping[str, tuple[int, int]] | None = None,
                 tied: list[str] = (), anchored: list[str] = ()) -> list[list[str]]:
    """`tie_strengths`, `set_tie_strength` and (with anchors here or in `anchored`) `load_anchors`.
    `tied`, `anchored`: submodule expressions with ties, and with anchors, that these methods reach
    too (the all-models module sets λ and loads anchors in each model as well as its own)."""
    if not groups:
        return []
    pairs = [(ids, f"self.{attrs.strength if at is None else attrs.loops[at]}")
             for at, ids, _ in _segments(groups, copies)]
    table = ["    buffers = (  # (tie group ids, their λ buffer)", *(f"        ({ids}, {buf})," for ids, buf in pairs), "    )"]
    strengths = [
        "def tie_strengths(self):",
        '    """Tie group id → λ, as tie_penalty uses it now."""',
        *table,
        "    return {g: lam for ids, buffer in buffers for g, lam in zip(ids, buffer.tolist())}",
    ]
    set_lines = [
        "def set_tie_strength(self, value, group=None):",
        '    """Set λ of tie group `group` (an id from tie_strengths), or of every group; no recompiling."""',
        "    if group is not None and group not in self.tie_strengths():",
        '        raise KeyError(f"no tie group {group!r}; the groups are {sorted(self.tie_strengths())}")',
        *table,
        "    with torch.no_grad():",
        "        for ids, buffer in buffers:",
        "            for i, g in enumerate(ids):",
        "                if group is None or g == group:",
        "                    buffer[i] = float(value)",
    ]
    for c in tied:
        set_lines += [f"    if group is None or group in {c}.tie_strengths():", f"        {c}.set_tie_strength(value, group)"]
    out = [strengths, set_lines]
    if attrs.anchors or anchored:
        rows = ", ".join(f"{literal(k)}: self.{v}" for k, v in attrs.anchors.items())
        load = [
            "def load_anchors(self, state):",
            '    """Fill each anchor from `state` (checkpoint key → tensor): same shape and dtype, never cast."""',
        ]
        if attrs.anchors:
            load += [
                f"    for key, buffer in {{{rows}}}.items():",
                "        value = state.get(key) if hasattr(state, \"get\") else None",
                "        if not isinstance(value, torch.Tensor):",
                '            raise KeyError(f"the checkpoint has no tensor {key!r} for an anchor")',
                "        if value.shape != buffer.shape or value.dtype != buffer.dtype:",
                ('            raise ValueError(f"anchor {key!r}: the checkpoint holds {value.dtype} {list(value.shape)}, '
                 'the tie needs {buffer.dtype} {list(buffer.shape)}")'),
                "        with torch.no_grad():",
                "            buffer.copy_(value)",
                f"    self.{attrs.loaded} = True",
            ]
        load += [f"    {c}.load_anchors(state)" for c in anchored]
        out.append(load)
    return out
