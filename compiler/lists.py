"""Lists of children: `ds = [Conv2d(…), BatchNorm2d(…)]`, `ds[i]`, `ds(x)` and `ds += Kind(…)`.

Rule: a list declares one child per element, of any kind, named by its index (`ds.0`, `ds.1`: the
state-dict keys `ds.0.weight`, `ds.1.running_mean`); the list itself is an instance whose `items`
name them. `ds[i]` is one child (its index checked against the list's length); `ds(x)` runs the
children in order, like `nn.Sequential`, so each must take one input and give one value. In a
non-shared repeat, `ds += Kind(…)` appends one child per iteration (`ds.k … ds.{k+N-1}` after the
k written ones): inside the body `ds` is that iteration's copy, after the loop `ds[i]` reaches
every child. A list is declared outside non-shared repeats, and takes `+=` in one repeat.
"""
from __future__ import annotations

from dataclasses import replace

from tiec.dsl import ast
from tiec.dsl.diagnostics import TieError

from . import ir
from .refs import Instance, Items, Scope


class Listing:
    """The lists-of-children half of `elaborate.SubgraphElaborator`."""

    def is_child_list(self, value: ast.Expr, scope: Scope) -> bool:
        """Whether `name = [ … ]` declares children: an empty list, or one holding a constructor."""
        return isinstance(value, ast.ListExpr) and (
            not value.items or any(self.declared_kind(x, scope) is not None for x in value.items))

    def declare_list(self, stmt: ast.Assign, scope: Scope) -> Items:
        if stmt.annotations:
            raise TieError("share/tie annotations go on one child, not on a list of children",
                           stmt.annotations[0].span, hint=f"write a statement: share {stmt.name}[0].weight, other.weight")
        if any(not shared for _, shared, _ in self.loops):
            raise TieError(f"a list of children cannot be declared inside `repeat` (one '{stmt.name}' per copy)",
                           stmt.name_span, hint="declare it before the repeat and append to it there: "
                                                f"{stmt.name} += Kind(…)")
        existing = self.instances.get(stmt.name)
        if existing is not None:
            raise TieError(f"'{stmt.name}' is already declared", stmt.name_span,
                           notes=[(existing.span, "first declared here")], hint="pick another name")
        self.check_rebind(stmt.name, stmt.name_span, scope)
        self.instances[stmt.name] = ir.Instance(stmt.name, None, None, ir.frozen(), (), stmt.span)
        self.index.lists.add(stmt.name)
        names = []
        for i, item in enumerate(stmt.value.items):
            kind = self.declared_kind(item, scope)
            if kind is None:
                raise TieError("a list of children holds layers and blocks, each written as its constructor",
                               item.span, hint=f"for example: {stmt.name} = [Conv2d(64, 128, 1), BatchNorm2d(128)]")
            child = ast.Assign(f"{stmt.name}.{i}", item, (), item.span, item.span)
            self.declare(child, kind, scope)
            names.append(child.name)
        self.instances[stmt.name] = replace(self.instances[stmt.name], items=tuple(names))
        return Items(stmt.name, len(names), len(names))

    def append(self, stmt: ast.Append, scope: Scope) -> None:
        """`name += Kind(…)`: the repeat around it appends one copy per iteration."""
        name, bound = stmt.name, scope.get(stmt.name)
        if not self.loops:
            raise TieError("`+=` appends one child per iteration of a repeat; outside one, write the child in "
                           "the list", stmt.span, hint=f"{name} = [Kind(…), Kind(…)]")
        loop_id, shared, _ = self.loops[-1]
        if shared:
            raise TieError("`+=` appends a copy per iteration, but `repeat … share` has one instance for "
                           "every iteration", stmt.span, hint="drop `share`: repeat N { … }")
        if isinstance(bound, Instance) and any(n == name for n, _ in self.appending.get(loop_id, ())):
            raise TieError(f"'{name}' is appended to twice in this repeat; a list takes one `+=` per repeat",
                           stmt.span)
        if not isinstance(bound, Items):
            what = "not declared" if bound is None else "not a list of children"
            raise TieError(f"'{name}' is {what}; `+=` appends to a list of children", stmt.name_span,
                           hint=f"declare it before the repeat: {name} = [Kind(…)] (or {name} = [])")
        if bound.run is not None:
            raise TieError(f"'{name}' already has children appended by a repeat; a list takes `+=` in one "
                           "repeat", stmt.span)
        if sum(1 for _, s, _ in self.loops if not s) > 1:
            raise TieError("`+=` appends in one repeat, not in repeats nested in one another", stmt.span,
                           hint="multiply the counts: repeat a * b { … }")
        kind = self.declared_kind(stmt.value, scope)
        if kind is None:
            raise TieError("`+=` appends a layer or block, written as its constructor", stmt.value.span,
                           hint=f"for example: {name} += Linear(64, 64)")
        count = next(n for i, _, n in self.loops if i == loop_id)
        child = ast.Assign(f"{name}.{bound.count}", stmt.value, (), stmt.span, stmt.name_span)
        ref = self.declare(child, kind, scope)
        self.instances[child.name] = replace(self.instances[child.name], appended=count)
        lst = self.instances[name]
        self.instances[name] = replace(lst, items=(*lst.items, child.name))
        self.appending.setdefault(loop_id, []).append((name, replace(bound, run=child.name)))
        scope[name] = ref  # in the body, the list's name is this iteration's copy

    def open_lists(self, repeat: ast.Repeat, scope: Scope) -> None:
        """Mark the lists a repeat's body appends to as growing, until it closes."""
        for s in repeat.body:
            if isinstance(s, ast.Append) and repeat.schedule is not None:
                raise TieError("`+=` cannot append in a scheduled repeat: the schedule shares the copies the "
                               "repeat declares", s.span, hint="drop the schedule, or declare a copy per iteration: layer = Kind(…)")
            if isinstance(s, ast.Append) and isinstance(scope.get(s.name), Items):
                scope[s.name] = replace(scope[s.name], open=True)

    def close_lists(self, loop_id: int, count: int, count_src: str, scope: Scope) -> None:
        """After the repeat, each list it appended to stands for all its children again."""
        for name, items in self.appending.pop(loop_id, ()):
            scope[name] = replace(items, count=items.count + count, run_src=count_src, open=False)
        for name, value in list(scope.items()):  # a list not appended to after all (no `+=` ran)
            if isinstance(value, Items) and value.open:
                scope[name] = replace(value, open=False)

    def call_list(self, items: Items, call: ast.Call, scope: Scope) -> str:
        """`ds(x)`: one `call` node running, in order, the children the list has at this point."""
        name = items.path
        if items.open:
            raise TieError(f"'{name}' is still growing here; call it after the repeat that appends to it", call.span)
        if call.kwargs or len(call.args) != 1:
            raise TieError(f"'{name}' runs its children in order, so it takes one input, got "
                           f"{len(call.args) + len(call.kwargs)}", call.span,
                           hint=f"call one child with several: {name}[0](a, b)")
        if items.count == 0:
            raise TieError(f"'{name}' has no children to run", call.span)
        for child_name in self.instances[name].items:
            child = self.instances[child_name]
            if child.layer is not None and child.layer.kind == "Parameter":
                raise TieError(f"'{name}' runs its children in order, but '{_shown(child_name)}' is a parameter", call.span,
                               notes=[(child.span, "declared here")])
            if child.block is not None:
                sub = self.registry.subgraphs[child.block]
                if len(sub.inputs) != 1 or len(sub.outputs) != 1:
                    raise TieError(f"'{name}' runs its children in order, so each takes one input and gives one "
                                   f"value; '{_shown(child_name)}' ({sub.definition}) takes {len(sub.inputs)} and gives "
                                   f"{len(sub.outputs)}", call.span, notes=[(child.span, "declared here")],
                                   hint=f"call the children one by one: {name}[{child_name.rsplit('.', 1)[1]}](…)")
        x = self.tensor(call.args[0], scope)
        out = self.g.fresh(name)
        self.g.naming[out] = (name, None)
        attrs = {"instance": name, "outputs": (out,), "arg_spans": (call.args[0].span,), "children": items.count}
        self.g.nodes.append(ir.Node("call", out, (x,), ir.frozen(attrs), call.span))
        return out

    def note_list_index(self, head: Items, i: int) -> None:
        """An index into appended copies fixes how many the constructor must make."""
        if head.run is not None and head.written <= i < head.count:
            self.counts.append((head.run, i - head.written, head.run_src))



def _shown(child: str) -> str:
    """A child's local name as the spec writes it: `ds.1` → `ds[1]`."""
    head, _, index = child.rpartition(".")
    return f"{head}[{index}]"
