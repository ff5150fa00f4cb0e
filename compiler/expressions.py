"""Expressions → IR nodes: op and layer calls, arithmetic, parameter references.

Rule: an expression is a tensor computation unless every name in it is a configuration value,
in which case it is config arithmetic. Literal numbers next to tensors become `const` nodes.
Each call binds its arguments against the signature in `catalog` (positional, then keywords,
then defaults); a config argument's dependence on model parameters marks them structural.
"""
from __future__ import annotations

from tiec.dsl import ast
from tiec.dsl.diagnostics import Span, TieError, did_you_mean

from . import ir
from .catalog import BINARY_OPS, LAYERS, OP_SIGNATURES, PIECE_OPS, REQUIRED, Arg
from .config import CVal, _arith, _wrap, coerce, combine, evaluate, is_config, is_number_call, left_spine
from .limits import MAX_PIECES
from .refs import Copies, Instance, Items, module_path


class GraphBuilder:
    """Accumulates nodes with unique value names."""

    def __init__(self, model: str):
        self.model = model
        self.nodes: list[ir.Node] = []
        self.names: set[str] = set()
        self.counts: dict[str, int] = {}
        self.naming: dict[str, tuple[str, str | None]] = {}  # value → (its base name, the user's name)

    def fresh(self, base: str) -> str:
        base = base if base.isidentifier() else "v"
        n = self.counts.get(base, 0)
        name = base if n == 0 else f"{base}_{n}"
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.counts[base] = n + 1
        self.names.add(name)
        return name

    def add(self, op: str, base: str, inputs: tuple[str, ...], attrs: dict, span: Span) -> str:
        name = self.fresh(base)
        self.nodes.append(ir.Node(op, name, inputs, ir.frozen(attrs), span))
        self.naming[name] = (base, None)
        return name

    def rename(self, value: str, user_name: str) -> str:
        """Give the node that defined `value` the user's name (SSA: h, h_1, …), if it is the last."""
        last = self.nodes[-1] if self.nodes else None
        if not isinstance(last, ir.Node) or last.name != value or not user_name.isidentifier():
            return value
        new = self.fresh(user_name)
        attrs = last.attrs
        if last.op == "call":
            attrs = ir.frozen({**attrs, "outputs": (new, *attrs["outputs"][1:])})
        self.nodes[-1] = ir.Node(last.op, new, last.inputs, attrs, last.span)
        self.names.discard(value)
        self.naming[new] = (self.naming.pop(value, (last.op, None))[0], user_name)
        return new


    def rename_pieces(self, values: tuple[str, ...], user_names: tuple[str, ...]) -> tuple[str, ...]:
        """Give the last nodes, when they define `values` in order (a chunk's pieces), the names
        they are unpacked to."""
        start = len(self.nodes) - len(values)
        tail = self.nodes[start:]
        if start < 0 or any(not isinstance(n, ir.Node) or n.name != v for n, v in zip(tail, values)):
            return values
        out = []
        for i, (node, user) in enumerate(zip(tail, user_names)):
            new = self.fresh(user) if user.isidentifier() else node.name
            self.nodes[start + i] = ir.Node(node.op, new, node.inputs, node.attrs, node.span)
            if new != node.name:
                self.names.discard(node.name)
                self.naming[new] = (self.naming.pop(node.name, (node.op, None))[0], user)
            out.append(new)
        return tuple(out)


class Binder:
    """Expression evaluation for a model elaborator (see `elaborate.ModelElaborator`)."""

    call_span: Span | None = None

    def __init__(self, graph: GraphBuilder):
        self.g = graph

    # subclass hooks
    def call_block(self, inst: Instance, call: ast.Call, scope: dict) -> str | tuple[str, ...]: ...
    def target(self, ref: ast.Ref, scope: dict): ...
    def instance_at(self, path: str) -> Instance | None: ...
    def call_list(self, items: Items, call: ast.Call, scope: dict) -> str: ...
    def note_indices(self, ref: ast.Ref, scope: dict) -> None: ...

    def tensor(self, e: ast.Expr, scope: dict) -> str:
        v = self.operand(e, scope)
        if isinstance(v, CVal):
            raise TieError("expected a tensor here, got a number", e.span)
        if isinstance(v, tuple):
            raise TieError(_several(e, len(v)), e.span,
                           hint=f"bind them first: {', '.join(f'v{i}' for i in range(len(v)))} = …")
        return v

    def operand(self, e: ast.Expr, scope: dict):
        """A tensor value name, or a CVal for config arithmetic."""
        if isinstance(e, (ast.Num, ast.Str)):
            return CVal.literal(e.value)
        if isinstance(e, ast.Name):
            return self.name(e, scope)
        if isinstance(e, ast.Neg):
            v = self.operand(e.operand, scope)
            if isinstance(v, CVal):
                return CVal(_arith("-", 0, v.value, e.span), f"-{_wrap(v, 3)}", v.deps, 3)
            return self.g.add("neg", "neg", (v,), {}, e.span)
        if isinstance(e, ast.BinOp):
            return self.binop(e, scope)
        if isinstance(e, ast.Call):
            return self.call(e, scope)
        if isinstance(e, (ast.Attr, ast.Index)):
            return self.param_ref(e, scope)
        raise TieError("a list is only allowed as an argument (concat, reshape)", e.span)

    def name(self, e: ast.Name, scope: dict):
        v = scope.get(e.id)
        if isinstance(v, (str, CVal)):
            return v
        if isinstance(v, Instance) and v.kind == "Parameter":  # a free parameter is read as a value
            return self.g.add("param", v.path.replace(".", "_"), (), {"param": v.path, "transposed": False}, e.span)
        if isinstance(v, (Instance, Copies, Items)):
            raise TieError(f"'{e.id}' is a layer, not a value", e.span, hint=f"call it: {e.id}(x)")
        if e.id in ("true", "false"):
            return CVal.literal(e.id == "true")
        values = [k for k, x in scope.items() if isinstance(x, (str, CVal))]
        raise TieError(f"unknown name '{e.id}'", e.span, hint=did_you_mean(e.id, values))

    def binop(self, e: ast.BinOp, scope: dict):
        spine = left_spine(e)  # a long chain `x + x + … + x` is walked in a loop, not recursively
        acc = self.operand(spine[-1].left, scope)
        for node in reversed(spine):
            acc = self.binop_step(node, acc, self.operand(node.right, scope))
        return acc

    def binop_step(self, e: ast.BinOp, a, b):
        for side, v in ((e.left, a), (e.right, b)):  # `a` is a tuple only as the chain's first operand
            if isinstance(v, tuple):
                raise TieError(_several(side, len(v)), side.span)
        if isinstance(a, CVal) and isinstance(b, CVal):
            if e.op == "@":
                raise TieError("'@' multiplies tensors, not numbers", e.span)
            return combine(e.op, a, b, e.span)
        if e.op == "//":
            raise TieError("'//' is integer division of configuration values, not of tensors", e.span,
                           hint="use '/' for tensors")
        if e.op == "@" and (isinstance(a, CVal) or isinstance(b, CVal)):
            raise TieError("'@' needs a tensor on both sides", e.span)
        a, b = (self.const(x, e.span) if isinstance(x, CVal) else x for x in (a, b))
        op = BINARY_OPS[e.op]
        return self.g.add(op, op, (a, b), {}, e.span)

    def const(self, v: CVal, span: Span) -> str:
        if isinstance(v.value, (str, bool, tuple)):
            raise TieError(f"{v.value!r} cannot be used in tensor arithmetic", span)
        self.structural |= v.deps  # baked into the graph as a literal
        return self.g.add("const", "const", (), {"value": v.value}, span)

    def param_ref(self, e: ast.Expr, scope: dict) -> str:
        ref = _as_ref(e)
        index_hint = "a tensor is indexed by select(x, dim, i) or slice(x, dim, start, end)"
        if ref is None:
            raise TieError("expected a parameter reference such as embed.weight or enc.weight.T", e.span,
                           hint=index_hint if isinstance(e, ast.Index) else None)
        head = scope.get(ref.parts[0]) if isinstance(ref.parts[0], str) else None
        if isinstance(head, str):
            if isinstance(e, ast.Index):
                raise TieError(f"'{ref.parts[0]}' is a tensor value; only layer copies are indexed with [i]", e.span,
                               hint=index_hint)
            raise TieError(f"'{ref.parts[0]}' is a tensor value; attributes apply to layers", e.span,
                           hint="use transpose(x, 0, 1) to transpose a value")
        t = self.target(ref, scope)
        if "" not in t.params:
            raise TieError(f"'{t.label}' is a layer; name one of its parameters", e.span,
                           hint=f"for example {t.label}.{next(iter(t.params))}")
        name = t.params[""]
        base = name.replace(".", "_") + ("_T" if t.transposed else "")
        return self.g.add("param", base, (), {"param": name, "transposed": t.transposed}, e.span)

    # ------------------------------------------------------------------ calls
    def call(self, e: ast.Call, scope: dict):
        func = e.func
        if isinstance(func, ast.Name):
            bound = scope.get(func.id)
            if isinstance(bound, Instance):
                return self.call_instance(bound, e, scope)
            if isinstance(bound, Copies):
                raise TieError(f"'{func.id}' has {bound.count} copies; call one: {func.id}[0](x)", e.span)
            if isinstance(bound, Items):
                return self.call_list(bound, e, scope)
            if is_number_call(e) and is_config(e, scope.config):  # `log(max_distance / 8)`: a number, no node
                return evaluate(e, scope.config)
            if func.id in OP_SIGNATURES:
                return self.op_call(func.id, e, scope)
            if func.id in PIECE_OPS:
                return self.pieces_call(func.id, e, scope)
            if func.id in LAYERS or func.id in getattr(self, "blocks", {}):
                raise TieError(f"'{func.id}(…)' declares a layer; give it a name first", e.span,
                               hint=f"layer = {func.id}(…), then call layer(x)")
            known = list(OP_SIGNATURES) + list(PIECE_OPS) + [k for k, v in scope.items() if isinstance(v, Instance)]
            raise TieError(f"unknown function or layer '{func.id}'", func.span,
                           hint=did_you_mean(func.id, known) or _unknown_call_hint(func.id, e))
        ref = _as_ref(func)
        if ref is not None and isinstance(scope.get(ref.parts[0]), (Instance, Copies, Items)):
            self.note_indices(ref, scope)
            config = scope.config
            path, _ = module_path(ref, scope, config)
            inst = self.instance_at(path)
            if inst is not None:
                return self.call_instance(inst, e, scope)
        raise TieError("only layers, blocks and ops can be called", e.span)

    def call_instance(self, inst: Instance, e: ast.Call, scope: dict) -> str:
        if inst.kind.startswith("block:"):
            return self.call_block(inst, e, scope)
        if inst.kind == "Parameter":
            name = inst.path.rsplit(".", 1)[-1]
            raise TieError(f"'{inst.path}' is a parameter, not a layer; it cannot be called", e.span,
                           hint=f"read it as a value: x + {name}, x @ {name}")
        if len(e.args) != 1 or e.kwargs:
            raise TieError(f"a {inst.kind} layer takes one input, got {len(e.args) + len(e.kwargs)}", e.span)
        x = self.tensor(e.args[0], scope)
        base = inst.path.rsplit(".", 1)[-1]
        base = base if not base.isdigit() else inst.path.replace(".", "_")
        outputs = LAYERS[inst.kind].outputs
        if outputs > 1:  # `c, s = rotary_emb(x)`: one node per value, as chunk's pieces
            return tuple(self.g.add(inst.kind, base, (x,), {"layer": inst.path, "index": i}, e.span)
                         for i in range(outputs))
        return self.g.add(inst.kind, base, (x,), {"layer": inst.path}, e.span)

    def op_call(self, op: str, e: ast.Call, scope: dict) -> str:
        inputs, attrs = self.op_args(op, OP_SIGNATURES[op], e, scope)
        return self.g.add(op, op, tuple(inputs), attrs, e.span)

    def pieces_call(self, op: str, e: ast.Call, scope: dict) -> str | tuple[str, ...]:
        """`chunk`/`split`: one node per piece, each with its `index`, as a tuple to unpack; a single
        piece (`split(x, [4])`) is one value, which a plain `y = …` binds (unpacking needs two names)."""
        inputs, attrs = self.op_args(op, PIECE_OPS[op], e, scope)
        count = attrs["chunks"] if op == "chunk" else len(attrs["sizes"])
        if not 1 <= count <= MAX_PIECES:
            raise TieError(f"{op} makes between 1 and {MAX_PIECES:,} pieces, not {count:,}", e.span)
        pieces = tuple(self.g.add(op, op, tuple(inputs), {**attrs, "index": i}, e.span) for i in range(count))
        return pieces[0] if count == 1 else pieces

    def op_args(self, op: str, sig: tuple[Arg, ...], e: ast.Call, scope: dict) -> tuple[list[str], dict]:
        """A call's tensor inputs and attributes, bound to the op's signature and checked."""
        exprs = bind_args(sig, e, op)
        inputs, attrs = [], {}
        config = scope.config
        for arg in sig:
            x = exprs[arg.name]
            if arg.kind == "tensor":
                inputs.append(self.tensor(x, scope))
            elif arg.kind == "opt_tensor":  # an optional input comes last: the node has it or not
                if x is not None:
                    inputs.append(self.tensor(x, scope))
            elif arg.kind == "operand":  # a number literal becomes a `const` node, as in `x * 0.5`
                v = self.operand(x, scope)
                if isinstance(v, tuple):
                    raise TieError(_several(x, len(v)), x.span)
                inputs.append(self.const(v, x.span) if isinstance(v, CVal) else v)
            elif arg.kind == "tensors":
                if not isinstance(x, ast.ListExpr) or not x.items:
                    raise TieError(f"{op} takes a list of tensors: {op}([a, b], dim)", x.span)
                inputs.extend(self.tensor(i, scope) for i in x.items)
            elif arg.kind == "dims":
                attrs[arg.target] = self.dims(x, config)
            elif x is None:
                attrs[arg.target] = None
            elif isinstance(x, CVal):
                attrs[arg.target] = x.value
            else:
                if isinstance(x, ast.Name) and x.id in scope and x.id not in config:  # a tensor or a layer
                    what = "a tensor" if isinstance(scope[x.id], str) else "a layer"
                    want = {"str": "a string", "bool": "true or false"}.get(arg.kind, "a number")
                    raise TieError(f"{op}: '{arg.name}' takes {want}, and '{x.id}' is {what}", x.span,
                                   hint="write a literal, or arithmetic over parameters")
                v = coerce(evaluate(x, config, f"'{arg.name}'"), arg.kind, x.span, arg.name, arg.minimum)
                if arg.choices and v.value not in arg.choices:
                    raise TieError(f"{op}: '{arg.name}' must be one of {', '.join(map(repr, arg.choices))}", x.span)
                self.structural |= v.deps
                attrs[arg.target] = v.value
        if op in ("max_pool2d", "avg_pool2d") and attrs.get("stride") is None:
            attrs["stride"] = attrs["kernel"]
        return inputs, attrs

    def dims(self, x: ast.Expr, config: dict) -> tuple:
        if not isinstance(x, ast.ListExpr):
            raise TieError("expected a list of dimensions such as [B, -1, 64]", x.span)
        out = []
        for d in x.items:
            if isinstance(d, ast.Name) and d.id not in config:
                out.append(d.id)
            else:
                v = coerce(evaluate(d, config, "a dimension"), "int", d.span, "dimension")
                self.structural |= v.deps
                out.append(v.value)
        return tuple(out)

    def bind_config(self, args: tuple[Arg, ...], call: ast.Call, config: dict, what: str) -> dict[str, CVal]:
        exprs = bind_args(args, call, what)
        out = {}
        for arg in args:
            x = exprs[arg.name]
            v = x if isinstance(x, CVal) else evaluate(x, config, f"argument '{arg.name}' of {what}")
            out[arg.target] = coerce(v, arg.kind, getattr(x, "span", call.span), arg.name, arg.minimum)
            if arg.choices and out[arg.target].value not in arg.choices:
                shown = ", ".join(repr(c) for c in arg.choices if c)
                raise TieError(f"{what}: '{arg.name}' must be one of {shown}", getattr(x, "span", call.span))
        return out


def _several(e: ast.Expr, n: int) -> str:
    """The error for a call giving several values where one is needed: a block's or a chunk's."""
    if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id in ("chunk", "split"):
        return f"this {e.func.id} makes {n} pieces; an expression needs one"
    return f"this block call returns {n} values; a call needs one"


def bind_args(sig: tuple[Arg, ...], call: ast.Call, what: str) -> dict:
    """Match a call's arguments to a signature → arg name → expression (or CVal default)."""
    if len(call.args) > len(sig):
        raise TieError(f"{what} takes at most {len(sig)} argument(s), got {len(call.args)}", call.args[len(sig)].span,
                       hint=f"{what}({', '.join(a.name for a in sig)})")
    out: dict = {a.name: x for a, x in zip(sig, call.args)}
    by_key = {n: a for a in sig for n in (a.name, *a.aliases)}
    for kw in call.kwargs:
        arg = by_key.get(kw.name)
        if arg is None:
            raise TieError(f"{what} has no argument '{kw.name}'", kw.span,
                           hint=did_you_mean(kw.name, by_key) or f"{what}({', '.join(a.name for a in sig)})")
        if arg.name in out:
            raise TieError(f"argument '{arg.name}' of {what} is given twice", kw.span)
        out[arg.name] = kw.value
    for arg in sig:
        if arg.name not in out:
            if arg.default is REQUIRED:
                raise TieError(f"{what} is missing argument '{arg.name}'", call.span,
                               hint=f"{what}({', '.join(a.name for a in sig)})")
            out[arg.name] = None if arg.default is None else CVal.literal(arg.default)
    return out


def _as_ref(e: ast.Expr) -> ast.Ref | None:
    parts: list = []
    span = e.span  # the whole reference, `a.bias.T`, not just its head
    while True:
        if isinstance(e, ast.Attr):
            parts.append(e.name)
            e = e.value
        elif isinstance(e, ast.Index):
            parts.append(e.index)
            e = e.value
        elif isinstance(e, ast.Name):
            parts.append(e.id)
            break
        else:
            return None
    return ast.Ref(tuple(reversed(parts)), span)


def _unknown_call_hint(name: str, call: ast.Call) -> str:
    """A layer takes one tensor, so only a one-argument call may be an undeclared layer."""
    ops = "the ops are listed in docs/language.md §5"
    if len(call.args) == 1 and not call.kwargs:
        return f"declare a layer before calling it ({name} = Linear(…)); {ops}"
    return f"'{name}' is not an op of tiec; {ops}"
