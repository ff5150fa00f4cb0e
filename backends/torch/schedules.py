"""A repeat's sharing schedule, written as it reads: copy i runs copy j's block (`self.blk[i] = self.blk[j]`).

Rule: a scheduled repeat (`repeat N share cycle(3)`, `only(layer.attn)`, …; `compiler/schedules.py`)
reaches the backend as share groups between its copies. When the groups of a path under the
schedule are exactly the schedule's (canonical the owning copy, members the copies that run it,
none transposed, nothing else in them), the constructor aliases the module (or parameter) of each
copy to its owner's in one loop over (copy, owner) pairs, instead of a line per slot. The state
dict is the same (every copy keeps its keys) and so are the tensors; any other group is written
as before, a line per member.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from tiec.compiler import ir
from tiec.compiler.buffers import buffer_slots

from .classes import attr, chain
from .naming import Namer, literal


def schedule_aliases(sub: ir.Subgraph, groups: list[list[str]], transposed: Callable[[str], bool],
                     taken: set[str], blocks: Mapping[str, ir.Subgraph] | None = None
                     ) -> tuple[list[str], list[list[str]]]:
    """Constructor lines for the scheduled repeats of `sub` (a model), and the groups left to write.

    Args:
        sub: the model's subgraph.
        groups: the share groups its class writes, each a list of qualified member keys, canonical first.
        transposed: whether a qualified member is read transposed.
        taken: names the constructor already binds (its parameters), which the loop must not rebind.
        blocks: the program's block subgraphs. A copy holding a layer with buffers (BatchNorm's
            running statistics) is never aliased whole, which would share its buffers too: its
            groups are written a line per slot.
    """
    lines: list[str] = []
    left = list(groups)
    names = Namer(taken | {"self"})
    i, j = names.fresh("i"), names.fresh("j")
    for lp in sub.body:
        if not isinstance(lp, ir.Loop) or lp.shared or lp.schedule is None:
            continue
        heads = {inst.name for inst in sub.instances if inst.loops == (lp.id,)}
        pairs = tuple((c, s) for c, s in enumerate(lp.schedule.source) if c != s)
        for path in lp.schedule.paths or sorted(heads):
            head, _, rest = path.partition(".")
            if head not in heads or not pairs or _holds_buffers(sub.instance_map[head], blocks or {}):
                continue
            explained = _explained(left, head, rest, lp.schedule.source, transposed)
            if explained is None:
                continue
            left = [g for g in left if id(g) not in explained]
            what = lp.schedule.kind + (f"({lp.schedule.distinct})" if lp.schedule.kind in ("cycle", "cycle_rev",
                                                                                            "sequence") else "")
            what += f" {path}" if lp.schedule.paths else ""
            target, owner = (_at(attr("self", head), v, rest) for v in (i, j))
            lines += [f"for {i}, {j} in {literal(pairs)}:  # {what}: copy {i} runs copy {j}'s tensors",
                      f"    {target} = {owner}"]
    return lines, left


def _at(base: str, index: str, rest: str) -> str:
    item = f"{base}[{index}]"
    return chain(item, rest) if rest else item


def _holds_buffers(inst: ir.Instance, blocks: Mapping[str, ir.Subgraph]) -> bool:
    """Whether `inst` (a layer, or a block instance and everything in it) has a buffer slot."""
    if inst.layer is not None:
        return bool(buffer_slots(inst.layer.kind, inst.layer.config))
    sub = blocks.get(inst.block)
    return sub is None or any(_holds_buffers(i, blocks) for i in sub.instances)


def _explained(groups: list[list[str]], head: str, rest: str, source: tuple[int, ...],
               transposed: Callable[[str], bool]) -> set[int] | None:
    """The ids of the groups under `head.<copy>.rest`, if every one is exactly the schedule's; else None."""
    runs: Mapping[int, set[int]] = {}
    for c, s in enumerate(source):
        runs.setdefault(s, set()).add(c)
    found: set[int] = set()
    for g in groups:
        parts = [_copy(ir.split(k)[1], head, rest) for k in g]
        if all(p is None for p in parts):
            continue
        if any(p is None for p in parts) or any(transposed(k) for k in g):
            return None  # the path's tensors are grouped with something else: written out
        copies = [c for c, _ in parts]
        slots = {slot for _, slot in parts}
        if len(slots) != 1 or copies[0] not in runs or set(copies) != runs[copies[0]] or len(copies) != len(set(copies)):
            return None
        found.add(id(g))
    return found or None


def _copy(local: str, head: str, rest: str) -> tuple[int, str] | None:
    """`blk.3.attn.weight` → (3, "attn.weight") when it lies under `head.<copy>.rest`."""
    parts = local.split(".")
    if len(parts) < 2 or parts[0] != head or not parts[1].isdigit():
        return None
    tail = ".".join(parts[2:])
    if rest and not (tail == rest or tail.startswith(rest + ".")):
        return None
    return int(parts[1]), tail
