"""Where each block instance lives and where each share group is written, for one emitted file.

Rule: every copy of every block instance is a *site* (`blk.3`, `tower`), found by walking the
structure. A share group is written once, at the lowest level that holds all of it: in a block
class when it is one of the block's own groups at every site of that block (`self.dec.weight =
self.enc.weight` inside `AutoEnc`), else in the model class, else in `Program`; the line aliases
every member to the group's canonical tensor (or, for a member shared transposed, points its
layer at it). A layer shared transposed is a `Transposed…` layer that stores no weight.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tiec.compiler import ir, lower


@dataclass(frozen=True)
class Site:
    model: str
    path: str  # flat module path within the model ("" for the model itself)
    key: str  # the subgraph it runs


def copies(sub: ir.Subgraph, inst: ir.Instance) -> list[str]:
    """The flat-relative paths of an instance's copies (`fc` alone, or `fc.0.1` …)."""
    loops = lower.loop_map(sub)
    ranges = [range(loops[lp].count) for lp in inst.loops]
    return [lower.copy_path(inst, idx) for idx in itertools.product(*ranges)]


@dataclass
class Plan:
    """Sites, the bindings of the emitted scope, and which level writes each share group."""

    program: ir.ProgramIR
    models: list[str]
    binds: Mapping[str, ir.Binding]  # qualified "Model.path.slot" → binding (one model's, or the program's)
    sites: dict[str, list[Site]] = field(default_factory=dict)  # key → its sites
    members: dict[int, list[str]] = field(default_factory=dict)  # group → qualified members, in order
    block_groups: dict[str, list[list[tuple[str, bool]]]] = field(default_factory=dict)  # key → own groups
    # key → (loop, groups) for groups a non-shared loop's body forms, one per iteration, written in a loop
    loop_groups: dict[str, list[tuple[int, list[list[tuple[str, bool]]]]]] = field(default_factory=dict)

    def __post_init__(self):
        for m in self.models:
            self._walk(m, self.program.structure[m], "")
        self.any_transposed = False
        for key, b in self.binds.items():
            if b.group is not None:
                self.members.setdefault(b.group, []).append(key)
                self.any_transposed |= b.transposed
        handled: set[int] = set()
        cache: dict = {}
        blocks = dict(self.program.blocks)
        for key, sites in self.sites.items():
            sub = self.program.blocks[key]
            order = {p.name: i for i, p in enumerate(lower.declared(sub, blocks, cache).params)}
            own = self._explained(sub, sites, order)
            self.block_groups[key] = own
            for site in sites:
                for group in own:
                    handled.add(self.binds[_q(site, group[0][0])].group)
        everywhere = {**self.sites, **{m: [Site(m, "", m)] for m in self.models}}
        for key, sites in everywhere.items():
            sub = self.program.structure[key] if key in self.program.structure else self.program.blocks[key]
            loops = [x for x in sub.body if isinstance(x, ir.Loop) and not x.shared
                     and any(isinstance(i, ir.Relations) and i.shares for i in x.body)]
            if not loops:
                continue
            order = {p.name: i for i, p in enumerate(lower.declared(sub, blocks, cache).params)}
            for loop in loops:
                groups = [g for g in _local_groups(sub, order, loop) if self._per_copy(sub, sites, loop, g, handled)]
                if groups:
                    self.loop_groups.setdefault(key, []).append((loop.id, groups))
        self.handled = handled

    def _per_copy(self, sub: ir.Subgraph, sites: list[Site], loop: ir.Loop, group, handled: set[int]) -> bool:
        """Whether `group`, written in `loop`'s body, is at every site and iteration exactly a flat group
        (or, with a canonical outside the loop, exactly one flat group over all iterations)."""
        found: dict[int, set[str]] = {}
        for site in sites:
            for i in range(loop.count):
                keys = [_q(site, lower._flat(sub, m, {loop.id: i}, "")) for m, _ in group]
                bs = [self.binds.get(k) for k in keys]
                if any(b is None or b.group is None for b in bs) or len({b.group for b in bs}) != 1 \
                        or bs[0].canonical != keys[0] or any(b.transposed != t for b, (_, t) in zip(bs, group)):
                    return False
                found.setdefault(bs[0].group, set()).update(keys)
        if any(set(self.members[g]) != keys for g, keys in found.items()):
            return False
        handled.update(found)
        return True

    def _walk(self, model: str, sub: ir.Subgraph, prefix: str) -> None:
        for inst in sub.instances:
            if inst.block is None:
                continue
            child = self.program.blocks[inst.block]
            for path in copies(sub, inst):
                site = Site(model, prefix + path, inst.block)
                self.sites.setdefault(inst.block, []).append(site)
                self._walk(model, child, site.path + ".")

    def _explained(self, sub: ir.Subgraph, sites: list[Site], order: dict[str, int]) -> list[list[tuple[str, bool]]]:
        """The block's own share groups that are the whole group, oriented alike, at every site."""
        out = []
        for group in _local_groups(sub, order):
            ok = True
            for site in sites:
                keys = [_q(site, m) for m, _ in group]
                bs = [self.binds.get(k) for k in keys]
                if any(b is None or b.group is None for b in bs) or len({b.group for b in bs}) != 1:
                    ok = False
                    break
                if len(self.members[bs[0].group]) != len(group) or bs[0].canonical != keys[0] \
                        or any(b.transposed != t for b, (_, t) in zip(bs, group)):
                    ok = False
                    break
            if ok and sites:
                out.append(group)
        return out

    def transposed(self, model: str, path: str) -> bool:
        """Whether the slot at flat `path` in `model` is shared transposed (its layer holds no weight)."""
        b = self.binds.get(ir.qualify(model, path))
        return b is not None and b.transposed

    def model_groups(self, model: str) -> list[list[str]]:
        """Groups written by `model`'s class: not a block's own, every member in the model."""
        if not hasattr(self, "_by_model"):  # bucketed once: a file may hold a thousand models
            self._by_model: dict[str, list[list[str]]] = {}
            for g, ms in self.members.items():
                owners = {ir.split(k)[0] for k in ms}
                if g not in self.handled and len(owners) == 1:
                    self._by_model.setdefault(owners.pop(), []).append(ms)
        return self._by_model.get(model, [])

    def program_groups(self) -> list[list[str]]:
        """Groups across models, written by `Program`."""
        return [ms for ms in self.members.values() if len({ir.split(k)[0] for k in ms}) > 1]


def _q(site: Site, local: str) -> str:
    return ir.qualify(site.model, f"{site.path}.{local}" if site.path else local)


def _local_groups(sub: ir.Subgraph, param_order: dict[str, int], loop: ir.Loop | None = None
                  ) -> list[list[tuple[str, bool]]]:
    """The share groups a body's own statements form (a block's, or one iteration of `loop`'s),
    canonical first (the first in declaration order), with orientation."""
    parent: dict[str, tuple[str, bool]] = {}

    def find(x: str) -> tuple[str, bool]:
        flip = False
        while parent.get(x, (x, False))[0] != x:
            x, f = parent[x]
            flip ^= f
        return x, flip

    order: dict[str, int] = {}
    for item in (loop.body if loop is not None else sub.body):
        if isinstance(item, ir.Relations):
            for r in item.shares:
                a, b = ir.split(r.a)[1], ir.split(r.b)[1]
                for x in (a, b):
                    order.setdefault(x, len(order))
                    parent.setdefault(x, (x, False))
                (ra, fa), (rb, fb) = find(a), find(b)
                if ra != rb:
                    parent[rb] = (ra, fa ^ fb ^ r.transposed)
    groups: dict[str, list[tuple[str, bool]]] = {}
    def place(n: str) -> int:  # a copy's first iteration stands for the copy
        flat = lower._flat(sub, n, {loop.id: 0}, "") if loop is not None else n
        return param_order.get(flat, len(param_order) + order[n])

    for x in sorted(parent, key=place):
        root, flip = find(x)
        groups.setdefault(root, []).append((x, flip))
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        head_flip = members[0][1]  # the first in source order is canonical: orient relative to it
        out.append([(m, f != head_flip) for m, f in members])
    return out


def referenced(body: Iterable) -> set[str]:
    """Instance names a body refers to (layers called, parameters read, blocks run)."""
    out: set[str] = set()
    for item in body:
        if isinstance(item, ir.Loop):
            out |= referenced(item.body)
        elif isinstance(item, ir.Node):
            for key in ("layer", "param", "instance"):
                if key in item.attrs:
                    out.add(item.attrs[key].split(".")[0])
    return out
