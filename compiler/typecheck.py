"""Shape and dtype inference over the structured IR: each block once per distinct input types.

Rule: every node's type follows from its inputs' by the flat pass's rules (`shapes.SHAPE_RULES`
and `shapes.DTYPE_RULES`), so the errors are the same, at the same nodes. A block's body is
inferred once per configuration and input types, and a loop's body only until the types it
carries repeat: later copies and iterations would see the same types and give the same ones. So
a model 96 blocks deep costs what one block costs, and `repeat 1000000 share` what one
iteration does. A block input's declared type is checked at each call. The flat view's types
are inferred from the flat graph when a backend asks for them.
"""
from __future__ import annotations

from dataclasses import replace

from tiec.dsl.diagnostics import TieError, raise_all

from . import ir, shapes
from .catalog import LAYERS, check_table
from .lower import base_name, instance_block, nodes_of
from .shapes_scan import check_carried, scan_dim, stacked_type

check_table("SHAPE_RULES", shapes.SHAPE_RULES)


class _View:
    """What a rule may ask of its graph (`layer`, `param_map`), for a subgraph's local paths."""

    def __init__(self, sub: ir.Subgraph, blocks):
        self.sub, self.blocks = sub, blocks
        self._params: dict[str, ir.Param] | None = None

    def layer(self, path: str) -> ir.Layer:
        _, inst, _ = ir.resolve_path(self.sub, path, self.blocks)
        return replace(inst.layer, path=self.key(path))

    def key(self, path: str) -> str:
        """A local path with the copy indices dropped (`blk.3.up` → `blk.up`), a list's index kept
        (`ds.1.weight`): the declaration it names. Every copy of an appended child is its first."""
        sub, parts, i, out = self.sub, path.split("."), 0, []
        while i < len(parts) and sub is not None and parts[i] in sub.instance_map:
            inst, i = ir.step(sub, parts, i)
            out.append(inst.name)
            sub = self.blocks[inst.block] if inst.block is not None else None
        return ".".join(out + parts[i:])

    def param_map(self) -> _Params:
        if self._params is None:
            self._params = {}
            self._collect(self.sub, "")
        return _Params(self._params, self.key)

    def _collect(self, sub: ir.Subgraph, prefix: str) -> None:
        for inst in sub.instances:
            if inst.layer is None and inst.block is None:  # a list: its children are instances too
                continue
            if inst.layer is not None:
                for slot, shape in LAYERS[inst.layer.kind].slots(inst.layer.config):
                    name = ir.slot_key(f"{prefix}{inst.name}", slot)
                    self._params[name] = ir.Param(name, prefix + inst.name, slot, tuple(shape),
                                                  inst.layer.config.get("dtype", "f32"), inst.span)
            else:
                self._collect(self.blocks[inst.block], f"{prefix}{inst.name}.")


class _Params(dict):
    """Parameters by local path; a copy's index (`blk.3.up.weight`) names the same declaration."""

    def __init__(self, params: dict, key):
        super().__init__(params)
        self._key = key

    def __getitem__(self, name: str) -> ir.Param:
        return super().__getitem__(self._key(name))

    def get(self, name: str, default=None):
        return super().get(self._key(name), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(self._key(name))


class _Checker:
    def __init__(self, program: ir.ProgramIR):
        self.blocks = dict(program.blocks)
        self.memo: dict[tuple, tuple[ir.TensorType, ...]] = {}
        self.local: dict[str, dict[str, ir.TensorType]] = {}
        self.views: dict[str, _View] = {}
        self.consts: dict[str, dict[str, float]] = {}

    def subgraph(self, sub: ir.Subgraph, ins: tuple[ir.TensorType, ...]) -> tuple[ir.TensorType, ...]:
        key = (sub.key, ins)
        if key in self.memo:
            return self.memo[key]
        types = {i.name: t for i, t in zip(sub.inputs, ins)}
        self.symbols = _bind_symbols(sub, ins)
        if sub.key not in self.views:
            self.views[sub.key] = _View(sub, self.blocks)
            self.consts[sub.key] = {n.name: n.attrs["value"] for n in nodes_of(sub.body) if n.op == "const"}
        self.walk(sub.body, sub, types)
        out = tuple(types[o.value] for o in sub.outputs)
        self.memo[key] = out
        self.local.setdefault(sub.key, types)
        return out

    def walk(self, body, sub: ir.Subgraph, types: dict) -> None:
        view, consts = self.views[sub.key], self.consts[sub.key]
        for item in body:
            if isinstance(item, ir.Loop):
                self.loop(item, sub, types)
            elif isinstance(item, ir.Node) and item.op == "call" and instance_block(
                    sub, item.attrs["instance"], self.blocks) is None:
                self.chain(item, sub, types)
            elif isinstance(item, ir.Node) and item.op == "call":
                child = self.blocks[instance_block(sub, item.attrs["instance"], self.blocks)]
                args = tuple(types[v] for v in item.inputs)
                for value, inp, span in zip(args, child.inputs, item.attrs["arg_spans"]):
                    shapes.check_declared(value, [ir.Check("", inp.type, span, inp.span)])
                _agree(child, args, item.attrs["arg_spans"])
                outer = self.symbols
                for name, t in zip(item.attrs["outputs"], self.subgraph(child, args)):
                    types[name] = t
                self.symbols = outer
            elif isinstance(item, ir.Node):
                ctx = shapes.Ctx(view, item, [types[i] for i in item.inputs], consts, self.symbols)
                shapes.DTYPE_RULES.get(item.op, _no_rule)(ctx)  # read at call time: tests swap the table
                types[item.name] = shapes.SHAPE_RULES[item.op](ctx)

    def chain(self, node: ir.Node, sub: ir.Subgraph, types: dict) -> None:
        """A list run as a chain: each child on the type the one before gives (copies alike)."""
        owner, lst, _ = ir.resolve_path(sub, node.attrs["instance"], self.blocks)
        prefix = node.attrs["instance"][:-len(lst.name)]
        t = types[node.inputs[0]]
        left = node.attrs["children"]
        for name in lst.items:
            child = owner.instance_map[name]
            for _ in range(min(child.appended or 1, left)):
                left -= 1
                before = t
                if child.layer is not None:
                    step = ir.Node(child.layer.kind, node.name, node.inputs, ir.frozen({"layer": prefix + name}),
                                   node.span)
                    ctx = shapes.Ctx(self.views[sub.key], step, [t], self.consts[sub.key], self.symbols)
                    shapes.DTYPE_RULES.get(step.op, _no_rule)(ctx)
                    t = shapes.SHAPE_RULES[step.op](ctx)
                    if t == before:  # every later copy sees this type again
                        break
                    continue
                block = self.blocks[child.block]
                shapes.check_declared(t, [ir.Check("", block.inputs[0].type, node.attrs["arg_spans"][0], block.inputs[0].span)])
                outer = self.symbols
                t = self.subgraph(block, (t,))[0]
                self.symbols = outer
                if t == before:  # every later copy sees this type again
                    break
        types[node.name] = t

    def loop(self, loop: ir.Loop, sub: ir.Subgraph, types: dict) -> None:
        if loop.over is not None:
            return self.scan(loop, sub, types)
        for outer, inner, _ in loop.carried:
            types[inner] = types[outer]
        seen: dict[tuple, int] = {}
        i = 0
        while i < loop.count:
            state = tuple(types[inner] for _, inner, _ in loop.carried)
            if state in seen:  # the carried types repeat with this period: skip the whole periods left
                period = i - seen[state]
                i = loop.count - (loop.count - i) % period
                seen = {}
                if i >= loop.count:
                    break
            seen[state] = i
            self.walk(loop.body, sub, types)
            for _, inner, result in loop.carried:
                types[inner] = types[result]
            i += 1
        for _, inner, result in loop.carried:
            types[result] = types[inner]


    def scan(self, loop: ir.Loop, sub: ir.Subgraph, types: dict) -> None:
        """One step stands for all: the carried values must come out of it with the types they went in with."""
        over = loop.over
        source = types[over.source]
        dim = scan_dim(source, over.dim, loop.span)
        types[over.slice] = ir.TensorType(source.dtype, source.shape[:dim] + source.shape[dim + 1:])
        for outer, inner, _ in loop.carried:
            types[inner] = types[outer]
        self.walk(loop.body, sub, types)
        for _, inner, result in loop.carried:
            check_carried(base_name(sub, inner), types[inner], types[result], loop.span)
            types[result] = types[inner]
        for after, value in over.stacked:
            types[after] = stacked_type(types[value], source.shape[dim], dim, loop.span)


def _bind_symbols(sub: ir.Subgraph, ins: tuple[ir.TensorType, ...]) -> dict[str, ir.Dim]:
    """What the block's declared input symbols stand for at a call: `in x: [N, L, D]` on `[B, T, 8]`
    binds N → B, L → T, D → 8 (a model's own inputs bind each symbol to itself)."""
    out: dict[str, ir.Dim] = {}
    for declared, actual in zip(sub.inputs, ins):
        for d, a in zip(declared.type.shape, actual.shape):
            if isinstance(d, str):
                out.setdefault(d, a)
    return out


def _agree(sub: ir.Subgraph, ins: tuple[ir.TensorType, ...], spans) -> None:
    """A symbol of the block's inputs stands for one size at a call: `in a: [N, D]` and
    `in b: [N, D]` cannot take `[B, 4]` and `[B, 5]`, whatever the body does with them."""
    seen: dict[str, tuple[int, ir.Input]] = {}
    for declared, actual, span in zip(sub.inputs, ins, spans):
        for d, a in zip(declared.type.shape, actual.shape):
            if not (isinstance(d, str) and isinstance(a, int)):
                continue
            if d in seen and seen[d][0] != a:
                size, first = seen[d]
                raise TieError(f"symbol '{d}' stands for {size} in '{first.name}' "
                               f"but {a} in '{declared.name}' at this call", span,
                               notes=[(first.span, f"'{first.name}' declares '{d}' here")]
                               + ([(declared.span, f"and '{declared.name}' here")] if first is not declared else []),
                               hint="pass values whose sizes agree, or give the block a symbol per size")
            seen.setdefault(d, (a, declared))


def run(program: ir.ProgramIR) -> ir.ProgramIR:
    checker, errors = _Checker(program), []
    for sub in program.structure.values():
        try:
            checker.subgraph(sub, tuple(i.type for i in sub.inputs))
        except TieError as e:
            errors.append(e)
    raise_all(errors)
    local = ir.frozen({k: ir.frozen(v) for k, v in checker.local.items()})
    return replace(program, local_types=local, types=ir.FlatTypes(program.models, shapes.infer))


def _no_rule(ctx: shapes.Ctx) -> None:
    """An op whose dtypes the shape rule alone decides."""
