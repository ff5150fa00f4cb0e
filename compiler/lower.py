"""Lowering: the structured IR → the flat view (one `Graph` per model), blocks inlined, loops unrolled.

Rule: a subgraph's body is walked twice. The declaring walk visits `Decl`s and `Relations` in
order, through every iteration of a non-shared loop and the first of a shared one: each
instance's layers and parameters are declared at its module path (`blk.3.up`: a copy of a loop
takes the iteration's index after its name) and each share/tie request is restated over those
paths. The computing walk visits nodes through every iteration: a `call` inlines the block's
body against its layers, a loop carries the values it rebinds into the next iteration. Value
names are made again, in that order, from the base each structured node was named from, so the
flat names are those a single pass over the spec would give (`x`, `x_1`, `norm_5`).
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import ir
from .catalog import LAYERS
from .expressions import GraphBuilder


@dataclass
class Declared:
    """A subgraph's layers, parameters and requests, named by module path from the subgraph."""

    layers: list[ir.Layer] = field(default_factory=list)
    params: list[ir.Param] = field(default_factory=list)
    shares: list[ir.ShareRequest] = field(default_factory=list)
    ties: list[ir.TieRequest] = field(default_factory=list)


def _flat(sub: ir.Subgraph, local: str, indices: dict[int, int], prefix: str) -> str:
    """A local module path → the flat path: copies of enclosing loops take their iteration index."""
    head, _, rest = local.partition(".")
    inst = sub.instance_map.get(head)
    if inst is not None and inst.items and rest:  # a list's child: an appended one takes its iteration's index
        k, _, tail = rest.partition(".")
        child = ir.list_child(sub.instance_map, inst, int(k)) if k.isdigit() else None
        if child is not None and child.appended and child.loops[-1] in indices:
            k = str(int(child.name.rsplit(".", 1)[1]) + indices[child.loops[-1]])
        return prefix + ".".join(p for p in (head, k, tail) if p)
    implicit = [str(indices[lp]) for lp in inst.loops if lp in indices] if inst is not None else []
    return prefix + ".".join(p for p in (head, *implicit, rest) if p)


def _qualified(sub: ir.Subgraph, qualified: str, indices, prefix: str, model: str) -> str:
    return ir.qualify(model, _flat(sub, ir.split(qualified)[1], indices, prefix))


def declared(sub: ir.Subgraph, subgraphs: dict[str, ir.Subgraph], cache: dict[str, Declared]) -> Declared:
    """What `sub` declares (see the module docstring), relative to it; child blocks come from `cache`."""
    out = Declared()
    _declare(sub.body, sub, subgraphs, cache, {}, out)
    return out


def _declare(body, sub, subgraphs, cache, indices: dict[int, int], out: Declared) -> None:
    for item in body:
        if isinstance(item, ir.Decl):
            inst = sub.instance_map[item.name]
            path = _flat(sub, item.name, indices, "")
            if inst.layer is not None:
                layer = replace(inst.layer, path=path)
                out.layers.append(layer)
                for slot, shape in LAYERS[layer.kind].slots(layer.config):
                    out.params.append(ir.Param(ir.slot_key(path, slot), path, slot, tuple(shape), layer.config.get("dtype", "f32"), layer.span))
            else:
                if inst.block not in cache:
                    cache[inst.block] = declared(subgraphs[inst.block], subgraphs, cache)
                _extend(out, cache[inst.block], path + ".")
        elif isinstance(item, ir.Relations):
            for r in item.shares:
                out.shares.append(replace(r, a=_qualified(sub, r.a, indices, "", ""),
                                          b=_qualified(sub, r.b, indices, "", "")))
            for t in item.ties:
                members = tuple(replace(m, param=_qualified(sub, m.param, indices, "", "")) for m in t.members)
                out.ties.append(replace(t, members=members))
        elif isinstance(item, ir.Loop):
            for i in range(1 if item.shared else item.count):  # a shared loop declares, and relates, once
                _declare(item.body, sub, subgraphs, cache, indices if item.shared else {**indices, item.id: i}, out)


def _extend(out: Declared, child: Declared, prefix: str) -> None:
    # built directly rather than with dataclasses.replace: a deep model has thousands of these
    Layer, Param, Share, Tie, Member = ir.Layer, ir.Param, ir.ShareRequest, ir.TieRequest, ir.Member
    out.layers += [Layer(prefix + x.path, x.kind, x.config, x.span, x.config_src) for x in child.layers]
    out.params += [Param(prefix + p.name, prefix + p.layer, p.slot, p.shape, p.dtype, p.span) for p in child.params]
    out.shares += [Share("." + prefix + r.a[1:], "." + prefix + r.b[1:], r.transposed, r.span, r.a_span, r.b_span)
                   for r in child.shares]
    out.ties += [Tie(t.strength, t.norm, tuple(Member("." + prefix + m.param[1:], m.transposed, m.span)
                                               for m in t.members), t.span, t.kind, t.anchors) for t in child.ties]


def _requalify(d: Declared, model: str) -> Declared:
    def q(name: str) -> str:
        return ir.qualify(model, ir.split(name)[1])

    return Declared(d.layers, d.params, [replace(r, a=q(r.a), b=q(r.b)) for r in d.shares],
                    [replace(t, members=tuple(replace(m, param=q(m.param)) for m in t.members)) for t in d.ties])


class _Computer:
    """The computing walk over one model: flat nodes and the declared-type checks of block inputs."""

    def __init__(self, subgraphs: dict[str, ir.Subgraph], model: ir.Subgraph):
        self.subgraphs = subgraphs
        self.g = GraphBuilder(model.definition)
        for i in model.inputs:  # inputs keep their names; nodes take others
            self.g.names.add(i.name)
            self.g.counts[i.name] = 1
        self.checks: list[ir.Check] = []

    def walk(self, body, sub: ir.Subgraph, env: dict[str, str], indices: dict[int, int], prefix: str) -> None:
        for item in body:
            if isinstance(item, ir.Node):
                if item.op == "call":
                    self.call(item, sub, env, indices, prefix)
                else:
                    self.node(item, sub, env, indices, prefix)
            elif isinstance(item, ir.Loop):
                self.loop(item, sub, env, indices, prefix)

    def node(self, n: ir.Node, sub, env, indices, prefix) -> None:
        attrs = dict(n.attrs)
        base, user = sub.naming.get(n.name, (n.op, None))
        if "layer" in attrs:
            attrs["layer"] = path = _flat(sub, attrs["layer"], indices, prefix)
            last = path.rsplit(".", 1)[-1]
            base = last if not last.isdigit() else path.replace(".", "_")
        elif n.op == "param":
            attrs["param"] = name = _flat(sub, attrs["param"], indices, prefix)
            base = name.replace(".", "_") + ("_T" if attrs["transposed"] else "")
        value = self.g.add(n.op, base, tuple(env[v] for v in n.inputs), attrs, n.span)
        env[n.name] = self.g.rename(value, user) if user else value

    def call(self, n: ir.Node, sub, env, indices, prefix) -> None:
        path = _flat(sub, n.attrs["instance"], indices, prefix)
        owner, inst, _ = ir.resolve_path(sub, n.attrs["instance"], self.subgraphs)
        if inst.block is None:  # a list of children run as a chain
            return self.chain(n, sub, owner, inst, env, path)
        child = self.subgraphs[instance_block(sub, n.attrs["instance"], self.subgraphs)]
        args = [env[v] for v in n.inputs]
        for value, inp, span in zip(args, child.inputs, n.attrs["arg_spans"]):
            self.checks.append(ir.Check(value, inp.type, span, inp.span))
        inner = {inp.name: value for inp, value in zip(child.inputs, args)}
        before = len(self.g.nodes)
        self.walk(child.body, child, inner, {}, path + ".")
        outs = [inner[o.value] for o in child.outputs]
        user = sub.naming.get(n.name, (None, None))[1]
        if user and len(outs) == 1 and len(self.g.nodes) > before:
            outs[0] = self.g.rename(outs[0], user)
        for name, value in zip(n.attrs["outputs"], outs):
            env[name] = value

    def chain(self, n: ir.Node, sub, owner: ir.Subgraph, lst: ir.Instance, env, path: str) -> None:
        """Each child of the list at `path` on the output of the one before, in order."""
        value = env[n.inputs[0]]
        for child_path, child in children(owner, lst, n.attrs["children"]):
            at = path + child_path[len(lst.name):]
            if child.layer is not None:
                value = self.g.add(child.layer.kind, at.replace(".", "_"), (value,), {"layer": at}, n.span)
                continue
            block = self.subgraphs[child.block]
            self.checks.append(ir.Check(value, block.inputs[0].type, n.attrs["arg_spans"][0], block.inputs[0].span))
            inner = {block.inputs[0].name: value}
            self.walk(block.body, block, inner, {}, at + ".")
            value = inner[block.outputs[0].value]
        user = sub.naming.get(n.name, (None, None))[1]
        env[n.attrs["outputs"][0]] = self.g.rename(value, user) if user else value

    def loop(self, loop: ir.Loop, sub, env, indices, prefix) -> None:
        if loop.over is not None:
            return self.scan(loop, sub, env, indices, prefix)
        for outer, inner, _ in loop.carried:
            env[inner] = env[outer]
        for i in range(loop.count):
            self.walk(loop.body, sub, env, indices if loop.shared else {**indices, loop.id: i}, prefix)
            following = {inner: env[result] for _, inner, result in loop.carried}
            env.update(following)


    def scan(self, loop: ir.Loop, sub, env, indices, prefix) -> None:
        """One `scan` node: the body's nodes, once, are its subgraph (see `ir.OPS`)."""
        over = loop.over
        initials = [env[outer] for outer, _, _ in loop.carried]
        outer_nodes, self.g.nodes = self.g.nodes, []
        env[over.slice] = self.g.fresh(base_name(sub, over.slice))
        state = []
        for _, inner, _ in loop.carried:
            env[inner] = self.g.fresh(base_name(sub, inner))
            state.append(env[inner])
        self.walk(loop.body, sub, env, indices, prefix)
        body, self.g.nodes = tuple(self.g.nodes), outer_nodes
        results = tuple(env[result] for _, _, result in loop.carried)
        stacked = tuple(env[value] for _, value in over.stacked)
        finals = [self.g.fresh(base_name(sub, result)) for _, _, result in loop.carried]
        afters = [self.g.fresh(base_name(sub, after)) for after, _ in over.stacked]
        outputs = tuple(finals + afters)
        if not outputs:  # nothing after the loop reads it
            return
        attrs = {"dim": over.dim, "slice": env[over.slice], "state": tuple(state), "results": results,
                 "stacked": stacked, "outputs": outputs, "body": body}
        self.g.nodes.append(ir.Node("scan", outputs[0], (env[over.source], *initials), ir.frozen(attrs), loop.span))
        for (_, _, result), final in zip(loop.carried, finals):
            env[result] = final
        for (after, _), value in zip(over.stacked, afters):
            env[after] = value


def base_name(sub: ir.Subgraph, value: str) -> str:
    """The name a structured value's flat copies are made from (`h_3` → `h`)."""
    named = sub.naming.get(value)
    if named is not None:
        return named[1] or named[0]
    head, _, tail = value.rpartition("_")
    return head if tail.isdigit() and head else value


def instance_block(sub: ir.Subgraph, path: str, subgraphs: dict[str, ir.Subgraph]) -> str | None:
    """The block key of the instance a local path names (`blk`, `blk.3`, `tower.inner`, `ds.1`);
    None for a list of children."""
    return ir.resolve_path(sub, path, subgraphs)[1].block


def children(sub: ir.Subgraph, lst: ir.Instance, limit: int | None = None) -> list[tuple[str, ir.Instance]]:
    """A list's children in order, one per copy of an appended one: (local path, instance); with
    `limit`, the first that many (those a chain call written before a `+=` repeat runs)."""
    out = []
    for name in lst.items:
        child = sub.instance_map[name]
        head, _, start = name.rpartition(".")
        out += [(f"{head}.{int(start) + i}", child) for i in range(child.appended)] if child.appended \
            else [(name, child)]
    return out[:limit]


def declare(program: ir.ProgramIR, model: str, cache: dict[str, Declared]) -> Declared:
    """`model`'s layers, parameters and requests (qualified by the model's name): no nodes."""
    return _requalify(declared(program.structure[model], dict(program.blocks), cache), model)


def graph(program: ir.ProgramIR, model: str, decl: Declared, defaults: Mapping[str, Any]) -> ir.Graph:
    """The flat `Graph` of `model`: the computing walk over what `declare` found."""
    sub = program.structure[model]
    computer = _Computer(dict(program.blocks), sub)
    env = {i.name: i.name for i in sub.inputs}
    computer.walk(sub.body, sub, env, {}, "")
    outputs = tuple(replace(o, value=env[o.value]) for o in sub.outputs)
    return ir.Graph(model, sub.params, ir.frozen(defaults), sub.inputs, tuple(decl.layers), tuple(decl.params),
                    tuple(computer.g.nodes), outputs, sub.span, sub.unrolled, tuple(computer.checks))


def nodes_of(body) -> list[ir.Node]:
    """Every node of a structured body, loop bodies included, in order."""
    out = []
    for item in body:
        if isinstance(item, ir.Node):
            out.append(item)
        elif isinstance(item, ir.Loop):
            out += nodes_of(item.body)
    return out


def loop_map(sub: ir.Subgraph) -> dict[int, ir.Loop]:
    """Loop id → loop, for every loop in a subgraph's body."""
    out: dict[int, ir.Loop] = {}
    stack = [sub.body]
    while stack:
        for item in stack.pop():
            if isinstance(item, ir.Loop):
                out[item.id] = item
                stack.append(item.body)
    return out


def sites(program: ir.ProgramIR, model: str) -> dict[str, str]:
    """Every copy of every block instance in `model`: flat module path ("" for the model) → its key."""
    out = {"": model}
    todo = [(program.structure[model], "")]
    while todo:
        sub, prefix = todo.pop()
        loops = loop_map(sub)
        for inst in sub.instances:
            if inst.block is None:
                continue
            ranges = [range(loops[lp].count) for lp in inst.loops]
            for idx in itertools.product(*ranges):
                path = prefix + copy_path(inst, idx)
                out[path] = inst.block
                todo.append((program.blocks[inst.block], path + "."))
    return out


def copy_path(inst: ir.Instance, idx: tuple[int, ...]) -> str:
    """The local path of one copy of an instance: `blk.3`, or `ds.{k + i}` for a child appended at k."""
    if inst.appended:
        head, _, start = inst.name.rpartition(".")
        return f"{head}.{int(start) + idx[-1]}"
    return ".".join([inst.name, *map(str, idx)])


def _patterns(sub: ir.Subgraph) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """The layer paths a subgraph's nodes call, and the parameter paths they read: local, with '*'
    for the index of a copy the node sees as its loop's current one."""
    calls, reads = set(), set()

    def pattern(path: str, loops: set[int]) -> tuple[str, ...]:
        head, *rest = path.split(".")
        inst = sub.instance_map.get(head)
        if inst is not None and inst.items:  # a list: its child by index, an appended one's copy as '*'
            if not rest:
                return (head, "*")
            child = ir.list_child(sub.instance_map, inst, int(rest[0]))
            return (head, "*" if child.appended and child.loops[-1] in loops else rest[0], *rest[1:])
        implicit = ["*"] * len([lp for lp in inst.loops if lp in loops]) if inst is not None else []
        return (head, *implicit, *rest)

    def walk(body, loops: set[int]):
        for item in body:
            if isinstance(item, ir.Loop):
                walk(item.body, loops | ({item.id} if not item.shared else set()))
            elif isinstance(item, ir.Node) and "layer" in item.attrs:
                calls.add(pattern(item.attrs["layer"], loops))
            elif isinstance(item, ir.Node) and item.op == "param":
                reads.add(pattern(item.attrs["param"], loops))
            elif isinstance(item, ir.Node) and item.op == "call" and item.attrs["instance"] in sub.instance_map \
                    and sub.instance_map[item.attrs["instance"]].items:  # a chain runs each child
                calls.add(pattern(item.attrs["instance"], loops))

    walk(sub.body, set())
    return calls, reads


def all_layers_used(program: ir.ProgramIR, model: str) -> bool:
    """Whether every copy of every layer is surely used, judged once per subgraph: each layer is
    called, or read, by a node that sees every copy (no fixed index), in its own subgraph."""
    todo, seen = [program.structure[model]], set()
    while todo:
        sub = todo.pop()
        if sub.key in seen:
            continue
        seen.add(sub.key)
        calls, reads = _patterns(sub)
        whole = {p[0] for p in calls | reads if all(x == "*" for x in p[1:1 + len(sub.instance_map[p[0]].loops)])}
        for inst in sub.instances:
            if inst.layer is not None and inst.name not in whole and inst.layer.kind != "Dropout" or inst.items:
                return False
            if inst.block is not None:
                todo.append(program.blocks[inst.block])
    return True


def used_layers(program: ir.ProgramIR, model: str, layers: list[ir.Layer]) -> set[str]:
    """Flat paths of the layers that some copy's nodes call or whose parameters they read."""
    where = sites(program, model)
    patterns = {key: _patterns(program.structure[key] if key == model else program.blocks[key])
                for key in set(where.values())}

    def matches(pattern: tuple[str, ...], parts: list[str], prefix_ok: bool) -> bool:
        if len(pattern) < len(parts) or (not prefix_ok and len(pattern) != len(parts)):
            return False
        return all(p == "*" or p == q for p, q in zip(pattern, parts))

    used, memo = set(), {}
    for layer in layers:
        parts = layer.path.split(".")
        for cut in range(len(parts)):
            key = where.get(".".join(parts[:cut]))
            if key is None:
                continue
            rest = tuple(parts[cut:])
            hit = memo.get((key, rest))
            if hit is None:  # every copy of a block asks the same question
                calls, reads = patterns[key]
                hit = memo[(key, rest)] = any(matches(p, rest, False) for p in calls) or \
                    any(matches(p, rest, True) for p in reads)
            if hit:
                used.add(layer.path)
                break
    return used


MAX_FLAT_NODES = 2_000_000  # nodes of a flat graph: ONNX export and the statistics unroll every repeat


def check_flat_size(program: ir.ProgramIR, model: str) -> None:
    """Refuse, at the repeat responsible, to unroll a model into more than `MAX_FLAT_NODES` nodes."""
    from tiec.dsl.diagnostics import TieError

    sizes: dict[str, int] = {}

    def size(sub: ir.Subgraph) -> int:
        if sub.key not in sizes:
            sizes[sub.key] = body(sub.body, sub)
        return sizes[sub.key]

    def body(items, sub: ir.Subgraph) -> int:
        n = 0
        for item in items:
            if isinstance(item, ir.Node) and item.op == "call":
                owner, inst, _ = ir.resolve_path(sub, item.attrs["instance"], program.blocks)
                for _, child in children(owner, inst, item.attrs.get("children")) if inst.block is None \
                        else [(None, inst)]:
                    n += 1 if child.layer is not None else size(program.blocks[child.block])
            elif isinstance(item, ir.Node):
                n += 1
            elif isinstance(item, ir.Loop):
                n += max(item.count, 1) * body(item.body, sub)
                if n > MAX_FLAT_NODES:
                    raise TieError(f"unrolled, this repeat makes over {MAX_FLAT_NODES:,} nodes, the limit of the flat "
                                   "graph that ONNX export and the statistics use", item.span,
                                   hint="PyTorch runs it as a loop; for ONNX, repeat fewer times")
        return n

    size(program.structure[model])
