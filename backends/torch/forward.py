"""The forward of one subgraph's class, in the structure the spec has: a statement per node, a
call per block instance, a `for` loop per repeat (`for blk in self.blk`, `for _ in
range(self.depth)` over one shared module, `for x_t in x.unbind(1)` over a runtime dimension,
each step's values appended to a list stacked after it), every value of one call unpacked on one
line, and each local reused once its value is dead (`liveness`)."""
from __future__ import annotations

import ast as pyast

from tiec.compiler import ir
from tiec.compiler.catalog import LAYERS
from tiec.compiler.lower import nodes_of

from .emit_table import TORCH_EMIT, Call
from .lists import list_length, only_appends
from .liveness import Liveness, Locals, inlined_literals
from .naming import Namer, attr


class ForwardWriter:
    """The forward-writing half of `classes.SubgraphClass` (a mixin: it reads the class's subgraph,
    types, loops and expression helpers)."""

    def forward_lines(self, reserved: set[str]) -> list[str]:
        sub = self.sub
        outputs = [o.value for o in sub.outputs]
        inline = inlined_literals(body=sub.body, outputs=outputs)
        scope = _Scope()
        loop_vars = self._loop_vars(reserved)
        nodes = nodes_of(sub.body)
        values = [i.name for i in sub.inputs] + [v for n in nodes if n.name not in inline
                                                  for v in n.attrs.get("outputs", (n.name,))]
        py = Namer(reserved | set(loop_vars.values())).claim(values)
        live = Liveness(sub.body, outputs, inline)
        # a hand-built graph names every value itself: each keeps its line
        self._inlinable = {} if self.legacy is not None else _single_use(sub, outputs, inline)
        names = Locals(live, py, [i.name for i in sub.inputs])
        args = ", ".join(["self", *(names[i.name] for i in sub.inputs)])
        ins = ", ".join(f"{names[i.name]}: {i.type}" for i in sub.inputs)
        outs = ", ".join(f"{o.name}: {self.types[o.value]}" if o.value in self.types else o.name for o in sub.outputs)
        lines = self._body(sub.body, names, inline, scope, loop_vars, live)
        ret = ", ".join(names[o] for o in outputs)
        last = sub.body[-1] if sub.body else None
        if (self.sub.kind == "block" and isinstance(last, ir.Node) and last.op != "call" and outputs == [last.name]
                and lines and lines[-1].startswith(f"{names[last.name]} = ")
                and sum(last.name in n.inputs for n in nodes) == 0):
            ret = lines.pop().split(" = ", 1)[1].split("  # ", 1)[0].rstrip()  # `return x + down`, as a person writes it
        return [f"def forward({args}):", f'    """{ins} → {outs}"""', *("    " + x for x in lines), f"    return {ret}"]

    def _loop_vars(self, reserved: set[str]) -> dict[tuple[str, int], str]:
        namer = Namer(reserved)
        out = {}
        for lp in self.loops.values():
            if lp.shared:
                continue
            for inst in self._loop_instances(lp):
                depth = len(inst.loops) - 1 - inst.loops.index(lp.id)
                out[(inst.name, lp.id)] = namer.fresh(inst.name.split(".")[0] + "_row" * depth)
        return out

    def _body(self, body, names: Locals, inline, scope: _Scope, loop_vars, live: Liveness) -> list[str]:
        lines: list[str] = []
        block: list[tuple[str, str]] = []

        def flush():
            width = max((len(code) for code, _ in block if len(code) <= 60), default=0)
            lines.extend(f"{code.ljust(width)}  # {c}" if c else code for code, c in block)
            block.clear()

        pending: dict[str, tuple[ir.Node, str]] = {}  # single-use temporaries, to be written into their use

        def local(v: str) -> str:
            return inline[v] if v in inline else f"\0{v}\0" if v in pending else names[v]

        def place(code: str) -> str:
            """Write each pending temporary into `code`: in place when it appears once; where a row
            reads its operand twice (`x.reshape(x.shape[0], …)`), bound to a local first."""
            for v in [v for v in pending if f"\0{v}\0" in code]:
                node, rhs = pending.pop(v)
                mark = f"\0{v}\0"
                if code.count(mark) > 1:
                    block.append(self._bind(node, rhs, names, live))
                    rhs = names[v]
                code = code.replace(mark, rhs)
            return code

        pieces = _piece_runs(body)
        for at, item in enumerate(body):
            if isinstance(item, ir.Node):
                if item.name in inline or pieces.get(at) == 0:
                    continue
                if at in self._inlinable.get(id(body), ()):
                    rhs = place(self._statement(item, names, local, scope, live, define=False)[0])
                    if _primary(rhs):
                        pending[item.name] = (item, rhs)
                    else:
                        block.append(self._bind(item, rhs, names, live))
                    continue
                if pieces.get(at):  # every value of one call, in order: one unpacking line
                    run = body[at:at + pieces[at]]
                    rhs = place(self._statement(item, names, local, scope, live, define=False)[0]).rsplit("[", 1)[0]
                    targets = ", ".join(names.define(n.name, live.pos[id(n)]) for n in run)
                    block.append((f"{targets} = {rhs}", ""))
                    continue
                code, comment = self._statement(item, names, local, scope, live)
                block.append((place(code), comment))
            elif isinstance(item, ir.Loop) and only_appends(self.sub, item):
                continue  # `repeat n { ds += Kind(…) }`: the constructor's `extend` is the whole loop
            elif isinstance(item, ir.Loop):
                flush()
                lines += names.enter(item)
                steps = names.steps(item)  # a loop over a tensor: a list per stacked value
                lines += [f"{v} = []" for v in steps]
                lines.append(self._header(item, scope, loop_vars, names))
                inner = _Scope(scope.loops | ({item.id} if not item.shared else set()),
                               {**scope.vars, **{k: v for k, v in loop_vars.items() if k[1] == item.id}})
                inside = self._body(item.body, names, inline, inner, loop_vars, live)
                inside += [f"{v}.append({local(value)})" for v, (_, value) in zip(steps, item.over.stacked)] \
                    if steps else []
                inside += names.leave(item)
                lines += ["    " + x for x in inside or ["pass"]]
                if steps:
                    dim = self._scan_dim(item)
                    lines += [f"{names.define(after, live.span[item.id][1])} = torch.stack({v}, {dim})"
                              for v, (after, _) in zip(steps, item.over.stacked)]
        flush()
        return lines

    def _scan_dim(self, lp: ir.Loop) -> int:
        source = self.types.get(lp.over.source)
        return lp.over.dim % len(source.shape) if source is not None else lp.over.dim

    def _header(self, lp: ir.Loop, scope: _Scope, loop_vars, names: Locals) -> str:
        if lp.over is not None:
            step = names.define(lp.over.slice, names.live.span[lp.id][0])
            return f"for {step} in {names[lp.over.source]}.unbind({self._scan_dim(lp)}):"
        insts = [] if lp.shared else self._loop_instances(lp)
        if not insts:
            return f"for _ in range(self.{self.count_attr[lp.id]}):"
        targets, iters = [], []
        for inst in insts:
            at = inst.loops.index(lp.id)
            if inst.appended:  # a list's appended children: the list from their first index on
                head, _, start = inst.name.rpartition(".")
                iters.append(f"{attr('self', head)}[{start}:]")
            else:
                iters.append(attr("self", inst.name) if at == 0 else scope.vars[(inst.name, inst.loops[at - 1])])
            targets.append(loop_vars[(inst.name, lp.id)])
        if len(insts) == 1:
            return f"for {targets[0]} in {iters[0]}:"
        return f"for {', '.join(targets)} in zip({', '.join(iters)}):"

    def _statement(self, node: ir.Node, names: Locals, local, scope, live: Liveness,
                   define: bool = True) -> tuple[str, str]:
        """`target = rhs` and its shape comment; with `define` False, the bare rhs (no local is bound)."""
        args = tuple(local(v) for v in node.inputs)
        at = live.pos[id(node)]
        if node.op == "call":
            callee = self.expr(node.attrs["instance"], scope)
            if "children" in node.attrs and node.attrs["children"] < list_length(self.sub, self.blocks, node.attrs["instance"]):
                callee += f"[:{node.attrs['children']}]"  # written before the repeat that appends to it
            rhs = f"{callee}({', '.join(args)})"
            targets = ", ".join(names.define(v, at) for v in node.attrs["outputs"])
            return f"{targets} = {rhs}", ""
        if node.op == "param":
            ref = self.expr(node.attrs["param"], scope) + (".T" if node.attrs.get("transposed") else "")
            call = Call(args, node.attrs, ref)
        elif "layer" in node.attrs:
            layer = self._layer(node.attrs["layer"])
            call = Call(args, node.attrs, self.expr(node.attrs["layer"], scope), layer.config)
        else:
            call = Call(args, node.attrs, types=tuple(self.types.get(v) for v in node.inputs))
        rhs = TORCH_EMIT[node.op](call)
        return self._bind(node, rhs, names, live) if define else (rhs, "")

    def _bind(self, node: ir.Node, rhs: str, names: Locals, live: Liveness) -> tuple[str, str]:
        """`local = rhs` for a node's value, and its shape as the line's comment."""
        target = names.define(node.name, live.pos[id(node)])
        t = self.types.get(node.name)
        shape = "" if t is None else f"[{', '.join(map(str, t.shape))}]"
        return f"{target} = {rhs}", shape if t is None or t.dtype == "f32" else f"{t.dtype}{shape}"


def _piece_runs(body) -> dict[int, int]:
    """Body positions of runs that give every value of one call in order (`i, f, g, o = x.chunk(4)`,
    `c, s = self.rotary_emb(x)`): the first value → the run's length, each later one → 0."""
    out: dict[int, int] = {}
    for at, item in enumerate(body):
        if not (isinstance(item, ir.Node) and item.attrs.get("index") == 0 and (
                item.op in ("chunk", "split") or item.op in LAYERS and LAYERS[item.op].outputs > 1)):
            continue
        count = item.attrs["chunks"] if item.op == "chunk" else len(item.attrs["sizes"]) if item.op == "split" \
            else LAYERS[item.op].outputs
        run = body[at:at + count]
        same = {k: v for k, v in item.attrs.items() if k != "index"}
        if len(run) == count and count > 1 and all(
                isinstance(n, ir.Node) and n.op == item.op and n.inputs == item.inputs and n.attrs["index"] == i
                and {k: v for k, v in n.attrs.items() if k != "index"} == same for i, n in enumerate(run)):
            out[at] = count
            out.update({at + i: 0 for i in range(1, count)})
    return out


class _Scope:
    def __init__(self, loops: set[int] | None = None, vars: dict | None = None):
        self.loops = loops or set()
        self.vars = vars or {}


# Nodes that draw random numbers or update state: a temporary is never moved across one, so the
# draws and updates happen in the order the spec wrote them.
_ORDERED = frozenset({"Dropout", "SelfAttention", "BatchNorm1d", "BatchNorm2d"})
_MAX_INLINE = 48  # characters of an expression written into its use, so lines stay readable


def _single_use(sub: ir.Subgraph, outputs: list[str], literals) -> dict[int, set[int]]:
    """id(body) → positions of the nodes whose value is a temporary used once, by a later node of
    the same body with nothing ordered between them: written into that use (`F.silu(self.fc(x))`),
    as a person writes it, and freed as soon as it is read rather than held to the end of forward.
    A value the user named, an output, a value a loop carries, steps through or stacks, and a
    call's values keep their own line."""
    uses: dict[str, int] = {}
    for n in nodes_of(sub.body):
        for v in n.inputs:
            uses[v] = uses.get(v, 0) + 1
    kept = set(outputs) | set(_loop_values(sub.body))
    out: dict[int, set[int]] = {}

    def walk(body) -> None:
        pieces = _piece_runs(body)
        for at, item in enumerate(body):
            if isinstance(item, ir.Loop):
                walk(item.body)
                continue
            if not isinstance(item, ir.Node) or item.op in ("call", "const") or item.op in _ORDERED \
                    or at in pieces or "index" in item.attrs or item.name in literals:
                continue
            v = item.name
            if v in kept or uses.get(v) != 1 or sub.naming.get(v, (None, None))[1] is not None:
                continue
            user = next((j for j in range(at + 1, len(body)) if isinstance(body[j], ir.Node)
                         and v in body[j].inputs), None)
            if user is None or user in pieces and pieces[user] == 0:
                continue
            between = body[at + 1:user]
            if any(isinstance(x, ir.Loop) or isinstance(x, ir.Node) and x.op in _ORDERED for x in between):
                continue
            out.setdefault(id(body), set()).add(at)

    walk(sub.body)
    return out


def _loop_values(body) -> list[str]:
    out = []
    for item in body:
        if isinstance(item, ir.Loop):
            out += [v for c in item.carried for v in (c[0], c[2])] + list(item.exports)
            if item.over is not None:
                out += [item.over.source] + [v for _, v in item.over.stacked]
            out += _loop_values(item.body)
    return out


def _primary(expr: str) -> bool:
    """Whether `expr` is a call, attribute, subscript or name: it stands as an operand anywhere
    without parentheses."""
    if len(expr) > _MAX_INLINE:
        return False
    try:
        node = pyast.parse(expr, mode="eval").body
    except SyntaxError:
        return False
    return isinstance(node, (pyast.Call, pyast.Attribute, pyast.Subscript, pyast.Name))
