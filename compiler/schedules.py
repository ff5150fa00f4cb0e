"""Sharing schedules across a repeat: which iterations hold one set of tensors.

`repeat N share <schedule> { … }` declares the body's layers once per iteration, as a plain
`repeat N` does (copies `blk.0 … blk.N-1`, each with its own state-dict keys), then shares each
copy's parameters with the first copy that runs the same distinct block. With k distinct blocks
(Takase & Kiyono 2023; Subformer; ALBERT's ablations), iteration i (0-based) runs block

    cycle(k)      i mod k                                      0 1 2 0 1 2      (N = 6, k = 3)
    cycle_rev(k)  i mod k, the last round reversed: k−1−(i mod k)   0 1 2 2 1 0
    sequence(k)   ⌊i·k / N⌋: each block runs N/k times in a row      0 0 1 1 2 2
    sandwich      0 for the first, 2 for the last, 1 for every other   0 1 1 1 1 2
    only(p, …)    0 for every iteration, for the slots under the paths p only (`layer.attn`);
                  every other slot stays one tensor per iteration

Rule: the schedule becomes share requests between copies, placed after the loop, so share
solving, statistics and every backend see ordinary share groups whose canonical is the copy
that owns the block. The count and k are baked in (a new depth needs a recompile).
"""
from __future__ import annotations

import math

from tiec.dsl import ast
from tiec.dsl.diagnostics import TieError, did_you_mean

from . import ir
from .config import coerce, evaluate
from .refs import ParamIndex, Target
from .relations import share_requests

KINDS = ("cycle", "cycle_rev", "sequence", "sandwich", "only")
_WITH_K = ("cycle", "cycle_rev", "sequence")


def blocks(kind: str, count: int, k: int) -> list[int]:
    """The distinct block each iteration runs (see the module docstring)."""
    if kind == "cycle":
        return [i % k for i in range(count)]
    if kind == "cycle_rev":
        rounds = math.ceil(count / k)
        return [i % k if i < k * (rounds - 1) else k - 1 - i % k for i in range(count)]
    if kind == "sequence":
        return [i * k // count for i in range(count)]
    if kind == "sandwich":
        return [0] + [1] * (count - 2) + [2]
    return [0] * count  # only


def resolve(sched: ast.Schedule, count: int, config, deps: set[str]) -> ir.Schedule:
    """The schedule of a repeat of `count` iterations; the parameters it reads are added to `deps`."""
    if sched.kind not in KINDS:
        raise TieError(f"unknown sharing schedule '{sched.kind}'", sched.span,
                       hint=did_you_mean(sched.kind, KINDS) or f"schedules: {', '.join(KINDS)}")
    k, paths = 1, ()
    if sched.kind in _WITH_K:
        if len(sched.args) != 1:
            raise TieError(f"{sched.kind} takes one argument, the number of distinct blocks: {sched.kind}(3)",
                           sched.span)
        value = coerce(evaluate(sched.args[0], config, "a block count"), "int", sched.args[0].span, "block count")
        deps |= value.deps
        k = value.value
        if not 1 <= k <= count:
            raise TieError(f"{sched.kind}({k}) needs 1 to {count} distinct blocks for {count} iterations",
                           sched.args[0].span)
    elif sched.kind == "sandwich":
        if sched.args:
            raise TieError("sandwich takes no arguments", sched.args[0].span)
        if count < 3:
            raise TieError(f"a sandwich needs at least 3 iterations (first, shared middle, last), got {count}",
                           sched.span)
        k = 3
    else:
        if not sched.args:
            raise TieError("only takes the paths to share: only(layer.attn)", sched.span)
        paths = tuple(_path(a) for a in sched.args)
    per = blocks(sched.kind, count, k)
    owner: dict[int, int] = {}
    for i, b in enumerate(per):
        owner.setdefault(b, i)
    return ir.Schedule(sched.kind, len(owner), tuple(owner[b] for b in per), paths)


def _path(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attr):
        return f"{_path(expr.value)}.{expr.name}"
    raise TieError("only names layers or parameters of the body: only(layer.attn)", expr.span)


def requests(sched: ir.Schedule, heads: list[str], index: ParamIndex, span) -> list[ir.ShareRequest]:
    """Share requests that make each copy hold its owner's tensors. `heads`: names the body declares."""
    wanted = sched.paths or tuple(heads)
    for path in wanted:
        head = path.split(".")[0]
        if head not in heads:
            raise TieError(f"'{head}' is not declared in this repeat", span,
                           hint=did_you_mean(head, heads) or f"the repeat declares: {', '.join(heads) or 'nothing'}")
    out = []
    for i, source in enumerate(sched.source):
        if source == i:
            continue
        for path in wanted:
            a, b = (_target(path, c, index, span) for c in (source, i))
            if a is None:
                raise TieError(f"'{path}' names no layer or parameter of the repeat's body", span)
            out += share_requests([("", a), ("", b)], span)
    return out


def _target(path: str, copy: int, index: ParamIndex, span) -> Target | None:
    head, _, rest = path.partition(".")
    name = ".".join(p for p in (head, str(copy), rest) if p)
    if name in index.params:
        return Target({"": name}, False, span, name)
    if name in index.under:
        return Target({n[len(name) + 1:]: n for n in index.under[name]}, False, span, name)
    return None
