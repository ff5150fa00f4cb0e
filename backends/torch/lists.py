"""Lists of children in an emitted class: the constructor line that builds one, and what the
forward needs to know about them.

Rule: a list called as a chain anywhere in its class is an `nn.Sequential`, any other an
`nn.ModuleList`, holding the children written in the list; an appended child is one more line,
`self.ds.extend(Kind(…) for _ in range(count))`, its count the repeat's, so a constructor argument
sets how many copies there are. A repeat that only appends computes nothing: the forward has no
loop for it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tiec.compiler import ir
from tiec.compiler.lower import nodes_of
from tiec.dsl.diagnostics import TieError

from .plan import copies

if TYPE_CHECKING:
    from .classes import SubgraphClass


def list_rows(cls: SubgraphClass, lst: ir.Instance) -> list[tuple[str, str, str]]:
    """`self.ds = nn.Sequential(…)` or `nn.ModuleList([…])`, then, for an appended child,
    `self.ds.extend(Kind(…) for _ in range(count))`: (target, value, comment) rows."""
    from .classes import assign, attr

    sub = cls.sub
    written = [sub.instance_map[n] for n in lst.items if not sub.instance_map[n].appended]
    ctors = [cls._ctor(child, child.name) for child in written]
    chained = any(n.op == "call" and n.attrs["instance"] == lst.name for n in nodes_of(sub.body))
    value = f"nn.Sequential({', '.join(ctors)})" if chained else f"nn.ModuleList([{', '.join(ctors)}])"
    rows = [(*assign("self", lst.name, value), "")]
    for name in lst.items[len(written):]:
        run = sub.instance_map[name]
        paths = copies(sub, run)
        ctor = cls._ctor(run, paths[0])
        if any(cls._ctor(run, p) != ctor for p in paths[1:]):
            raise TieError(f"the copies '{lst.name}' appends differ (shared or transposed one by one)", run.span,
                           hint="share whole copies, or declare the children one by one")
        count = cls._cfg(cls.loops[run.loops[-1]].count_src, run.appended)
        rows.append((f"{attr('self', lst.name)}.extend({ctor} for _ in range({count}))", "", ""))
    return rows


def only_appends(sub: ir.Subgraph, lp: ir.Loop) -> bool:
    """Whether a loop only appends children to lists: it computes nothing."""
    return not nodes_of(lp.body) and any(i.appended and i.loops[-1] == lp.id for i in sub.instances)


def list_length(sub: ir.Subgraph, blocks, path: str) -> int:
    """How many children the list at a local path has."""
    owner, lst, _ = ir.resolve_path(sub, path, blocks)
    return sum(owner.instance_map[n].appended or 1 for n in lst.items)
