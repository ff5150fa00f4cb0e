"""Elaborating loops: `repeat N { … }`, `repeat N share { … }` and `repeat x_t in unbind(x, dim) { … }`.

Rule: a loop's body is elaborated once, as a body of its own (`ir.Loop.body`). A name the body
rebinds that held a tensor before the loop is carried from one iteration to the next; after a
non-shared repeat, a name it declared stands for all its copies (`blk[3]`). A loop over a runtime
dimension binds its slice for the body only, carries only the names the body reads before it
assigns them, and makes every other name the body binds each step's value, stacked
(`ir.Over.stacked`); those no later statement reads are dropped once the definition is done.
"""
from __future__ import annotations

from dataclasses import replace

from tiec.dsl import ast
from tiec.dsl.diagnostics import TieError

from . import ir, schedules
from .catalog import REQUIRED, Arg
from .config import coerce, evaluate
from .expressions import bind_args
from .limits import MAX_SIZE, big
from .refs import Copies, Instance, Scope

_UNBOUND = object()


class Loops:
    """The loop statements of `elaborate.SubgraphElaborator` (a mixin: it uses the elaborator's
    graph, scope, loop stack and index)."""

    def repeat(self, stmt: ast.Repeat, scope: Scope):
        if stmt.slice is not None:
            return self.repeat_over(stmt, scope)
        count = coerce(evaluate(stmt.count, scope.config, "a repeat count"), "int", stmt.count.span, "repeat count")
        if count.value < 1:
            raise TieError(f"repeat count must be at least 1, got {count.value}", stmt.count.span)
        if count.value > MAX_SIZE:
            raise TieError(f"repeat count {big(count.value)} does not fit in int64", stmt.count.span,
                           hint="docs/language.md lists the limits")
        self.unrolled |= count.deps
        schedule = None
        if stmt.schedule is not None:  # the copies share by a schedule: count and k are baked in
            deps = set(count.deps)
            schedule = schedules.resolve(stmt.schedule, count.value, scope.config, deps)
            self.structural |= deps
        loop_id = next(self._loop_ids)
        rebound = _rebound(stmt.body)
        outer_body, self.g.nodes = self.g.nodes, []
        carried_in = []
        for name in rebound:
            if isinstance(scope.get(name), str):  # a tensor before the loop: carried between iterations
                inner = self.g.fresh(name)
                carried_in.append((name, scope[name], inner))
                scope[name] = inner
        self.loops.append((loop_id, stmt.shared, count.value))
        self.open_lists(stmt, scope)
        try:
            self.body(stmt.body, scope)
        finally:
            self.loops.pop()
            body, self.g.nodes = tuple(self.g.nodes), outer_body
        carried = []
        for name, outer, inner in carried_in:
            result = scope[name]
            if not isinstance(result, str):
                raise TieError(f"'{name}' is a tensor before the repeat; it cannot become a number inside it",
                               stmt.span)
            carried.append((outer, inner, result))
        exports = tuple(dict.fromkeys(scope[n] for n in rebound if isinstance(scope.get(n), str)))
        self.g.nodes.append(ir.Loop(loop_id, count.value, count.src, stmt.shared, body, tuple(carried), exports,
                                    stmt.count.span, schedule))
        if not stmt.shared:  # after the loop, a name stands for all its copies: blk[3]
            declared = _declared_names(stmt.body, self, scope)
            for name in declared:
                if isinstance(scope.get(name), (Instance, Copies)):
                    scope[name] = Copies(name, count.value, count.src)
            self.index.expand(loop_id, count.value)
            if schedule is not None:
                self.relations(schedules.requests(schedule, declared, self.index, stmt.schedule.span), ())
        self.close_lists(loop_id, count.value, count.src, scope)

    def repeat_over(self, stmt: ast.Repeat, scope: Scope):
        """`repeat x_t in unbind(x, dim) { … }`: a loop whose instances exist once, run once per slice."""
        source, dim, dim_src = self.unbind_arg(stmt.count, scope)
        self.check_rebind(stmt.slice, stmt.slice_span, scope)
        loop_id = next(self._loop_ids)
        rebound = [n for n in _rebound(stmt.body) if n != stmt.slice]
        outer_body, self.g.nodes = self.g.nodes, []
        hidden = scope.get(stmt.slice, _UNBOUND)
        scope[stmt.slice] = slice_value = self.g.fresh(stmt.slice)
        carried_in, before = [], {n: scope.get(n) for n in rebound}
        for name in rebound:
            if isinstance(scope.get(name), str):
                inner = self.g.fresh(name)
                carried_in.append((name, scope[name], inner))
                scope[name] = inner
        self.loops.append((loop_id, True, 1))
        try:
            self.body(stmt.body, scope)
        finally:
            self.loops.pop()
            body, self.g.nodes = tuple(self.g.nodes), outer_body
        carried, stacked, read = [], [], used_values(body)
        for name, _, inner in carried_in:
            if inner not in read:  # assigned before it is read: a value of each step, not carried
                continue
            if not isinstance(scope[name], str):
                raise TieError(f"'{name}' is a tensor before the repeat; it cannot become a number inside it",
                               stmt.span)
            carried.append((before[name], inner, scope[name]))
        kept = {c[1] for c in carried}
        for name in rebound:  # every other name the body binds: each step's value, stacked along dim
            if any(n == name and inner in kept for n, _, inner in carried_in) or not isinstance(scope.get(name), str):
                continue
            after = self.g.fresh(name)
            stacked.append((after, scope[name]))
            scope[name] = after
        if hidden is _UNBOUND:
            del scope[stmt.slice]
        else:
            scope[stmt.slice] = hidden
        over = ir.Over(source, dim, slice_value, tuple(stacked))
        self.g.nodes.append(ir.Loop(loop_id, 0, dim_src, True, body, tuple(carried), (), stmt.count.span,
                                    None, over))

    def unbind_arg(self, call: ast.Expr, scope: Scope) -> tuple[str, int, str]:
        """The tensor and dim of the `unbind(x, dim)` a loop over a runtime dimension steps through."""
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "unbind"):
            raise TieError("a repeat over a tensor steps through `unbind(x, dim)`", call.span,
                           hint="repeat x_t in unbind(x, 1) { … }: one step per slice of x along dim 1")
        sig = (Arg("x", "any", REQUIRED), Arg("dim", "any", None))
        exprs = bind_args(sig, call, "unbind")
        source = self.tensor(exprs["x"], scope)
        if exprs["dim"] is None:
            return source, 0, "0"
        dim = coerce(evaluate(exprs["dim"], scope.config, "a dim"), "int", exprs["dim"].span, "dim")
        self.structural |= dim.deps
        return source, dim.value, dim.src


def used_values(body) -> set[str]:
    """Every value a body reads: node inputs, and what its loops carry or step through."""
    out: set[str] = set()
    for item in body:
        if isinstance(item, ir.Node):
            out.update(item.inputs)
        elif isinstance(item, ir.Loop):
            out.update(v for c in item.carried for v in (c[0], c[2]))
            out.update(item.exports)
            if item.over is not None:
                out.add(item.over.source)
            out |= used_values(item.body)
    return out


def prune_stacked(body, used: set[str]) -> tuple:
    """Keep only the stacked values of loops over a runtime dimension that something reads."""
    out = []
    for item in body:
        if isinstance(item, ir.Loop):
            over = item.over
            if over is not None:
                over = replace(over, stacked=tuple((a, v) for a, v in over.stacked if a in used))
            item = replace(item, body=prune_stacked(item.body, used), over=over)
        out.append(item)
    return tuple(out)


def _rebound(stmts) -> list[str]:
    """Value names (not declarations) that `stmts` bind, nested repeats included, in order."""
    out: list[str] = []
    for s in stmts:
        if isinstance(s, ast.Assign):
            out.append(s.name)
        elif isinstance(s, ast.Unpack):
            out.extend(s.names)
        elif isinstance(s, ast.Repeat):
            out.extend(_rebound(s.body))
    return list(dict.fromkeys(out))


def _declared_names(stmts, el, scope: Scope) -> list[str]:
    """Names declared as layers or blocks in `stmts`, nested repeats included."""
    names = []
    for s in stmts:
        if isinstance(s, ast.Assign) and el.declared_kind(s.value, scope) is not None:
            names.append(s.name)
        elif isinstance(s, ast.Repeat):
            names += _declared_names(s.body, el, scope)
    return names
