"""Elaboration: AST → structured IR. Each definition's body runs once per configuration.

Rule: a model, and a block at each distinct set of parameter values it is instantiated with,
becomes one `Subgraph`, whose body runs once, top to bottom. `name = Layer(...)` or
`name = Block(...)` declares an instance under the local name `name`: inside a non-shared
`repeat`, one copy per iteration (`name[i]` after the loop); inside `repeat … share`, one instance
for every iteration. Calling a layer adds a node; calling a block instance adds a `call` node
whose outputs are the block's return values. A `repeat` becomes a `Loop` whose body runs once
here: a name it rebinds is carried from one iteration to the next. Other assignments bind values
(SSA: a rebinding is a new value). `share`/`tie` annotations and statements become requests over
local names, placed in the body where they were written; `lower` solves them per copy. Loops are
elaborated by `loops.Loops`, lists of children by `lists.Listing`.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

from tiec.dsl import ast
from tiec.dsl.diagnostics import Span, TieError

from . import ir, lower
from .catalog import LAYERS, REQUIRED, Arg, reserved_member
from .config import CVal, coerce, evaluate
from .expressions import Binder, GraphBuilder, bind_args
from .limits import MAX_BLOCK_NESTING, MAX_SIZE, Totals, big, check_layer
from .lists import Listing
from .loops import Loops, prune_stacked, used_values
from .refs import Copies, Instance, Items, ParamIndex, Scope
from .relating import Relating


class _Return(Exception):
    def __init__(self, values):
        self.values = values


class Blocks:
    """The program's block subgraphs, built on demand: one per definition and parameter values."""

    def __init__(self, definitions: Mapping[str, ast.Definition], dtype: str = "f32"):
        self.definitions = definitions
        self.dtype = dtype  # the parameters' and float inputs' dtype where the spec names none
        self.subgraphs: dict[str, ir.Subgraph] = {}
        self._keys: dict[tuple, str] = {}
        self._active: list[str] = []
        self.declared: dict[str, lower.Declared] = {}  # key → its layers and parameters, flat-named
        self.totals: dict[str, tuple[int, int]] = {}  # key → (layers, parameters) of one instance, unrolled

    def get(self, name: str, values: tuple, call_span: Span) -> ir.Subgraph:
        signature = (name, tuple((type(v).__name__, v) for v in values))
        key = self._keys.get(signature)
        if key is not None:
            return self.subgraphs[key]
        if name in self._active:
            raise TieError(f"block '{name}' instantiates itself", call_span)
        if len(self._active) >= MAX_BLOCK_NESTING:
            raise TieError(f"blocks nest more than {MAX_BLOCK_NESTING} deep here ({' → '.join(self._active[:3])} → …)",
                           call_span, hint="a block may hold instances of other blocks, to this depth")
        d = self.definitions[name]
        config = {p.name: CVal(v, p.name, frozenset({p.name})) for p, v in zip(d.params, values)}
        self._active.append(name)
        try:
            same = sum(1 for s in self.subgraphs.values() if s.definition == name)
            el = SubgraphElaborator(d, self, config, name if same == 0 else f"{name}@{same}")
            sub = el.run()
        finally:
            self._active.pop()
        self._keys[signature] = sub.key
        self.subgraphs[sub.key] = sub
        self.totals[sub.key] = (el.totals.layers, el.totals.params)
        self.declared[sub.key] = lower.declared(sub, self.subgraphs, self.declared)
        return sub


class SubgraphElaborator(Loops, Relating, Listing, Binder):
    """Builds one subgraph (a model, or a block at one configuration) from its definition."""

    def __init__(self, definition: ast.Definition, blocks: Blocks, config: dict[str, CVal], key: str | None = None):
        super().__init__(GraphBuilder(definition.name))
        self.definition = definition
        self.kind = definition.kind
        self.key = key or definition.name
        self.registry = blocks
        self.blocks = blocks.definitions
        self.config = config
        self.index = ParamIndex()
        self.input_names: set[str] = set()
        self.instances: dict[str, ir.Instance] = {}
        self.inputs: list[ir.Input] = []
        self.outputs: list[ir.Output] = []
        self.structural: set[str] = set()  # baked into the body
        self.unrolled: set[str] = set()  # what the flat view also depends on (counts, children's)
        self.counts: list[tuple[str, int, str]] = []
        self.loops: list[tuple[int, bool, int]] = []  # enclosing loops: (id, shared, count)
        self.totals = Totals()  # layers and parameters of one instance, every non-shared repeat unrolled
        self._loop_ids = itertools.count()
        self.appending: dict[int, list] = {}  # an open loop → the lists it appends to
        self.scope = Scope(config)

    # ------------------------------------------------------------------ driver
    def run(self) -> ir.Subgraph:
        d = self.definition
        try:
            self.body(d.body, self.scope)
        except _Return as ret:
            self.outputs = self.name_outputs(ret.values)
        if not self.outputs:
            if d.kind == "block":
                raise TieError(f"block '{d.name}' has no return statement", d.name_span)
            raise TieError(f"model '{d.name}' has no return statement", d.name_span,
                           hint="end the model with: return <expression>")
        if not self.inputs and d.kind == "model":
            raise TieError(f"model '{d.name}' declares no input", d.name_span, hint="add: in x: [B, 784]")
        defaults = {p.name: None if p.default is None else _default_src(p.default, self.config) for p in d.params}
        body = prune_stacked(tuple(self.g.nodes), used_values(self.g.nodes) | {o.value for o in self.outputs})
        return ir.Subgraph(
            self.key, d.kind, d.name, ir.frozen({k: v.value for k, v in self.config.items()}), ir.frozen(defaults),
            tuple(self.inputs), tuple(self.instances.values()), body, tuple(self.outputs),
            ir.frozen(self.g.naming), frozenset(self.structural), tuple(self.counts), d.span,
            frozenset(self.structural | self.unrolled))

    def name_outputs(self, values: list[tuple[str, ast.Expr]]) -> list[ir.Output]:
        taken = {i.name for i in self.inputs}
        out, unnamed = [], 0
        for value, expr in values:
            if isinstance(expr, ast.Name) and expr.id not in taken:
                name = expr.id
            else:
                name = "output" if unnamed == 0 else f"output_{unnamed}"
                unnamed += 1
            while name in taken:
                name += "_"
            taken.add(name)
            out.append(ir.Output(name, value, expr.span))
        return out

    # ------------------------------------------------------------------ statements
    def body(self, stmts, scope: Scope):
        for stmt in stmts:
            if isinstance(stmt, ast.Input):
                self.input(stmt, scope)
            elif isinstance(stmt, (ast.Assign, ast.Unpack)):
                self.assign(stmt, scope)
            elif isinstance(stmt, ast.Append):
                self.append(stmt, scope)
            elif isinstance(stmt, ast.Repeat):
                self.repeat(stmt, scope)
            elif isinstance(stmt, ast.Return):
                raise _Return([(self.tensor(v, scope), v) for v in stmt.values])
            elif isinstance(stmt, ast.ShareStmt):
                self.relations(self.share_refs(stmt.refs, scope, stmt.span), ())
            elif isinstance(stmt, ast.TieStmt):
                self.relations((), self.tie_refs(stmt, stmt.refs, scope))

    def relations(self, shares, ties):
        if shares or ties:
            self.g.nodes.append(ir.Relations(tuple(shares), tuple(ties)))

    def input(self, stmt: ast.Input, scope: Scope):
        if stmt.name in self.input_names:
            raise TieError(f"input '{stmt.name}' is declared twice", stmt.span)
        self.input_names.add(stmt.name)
        ttype = self.tensor_type(stmt.type, scope)
        name = self.g.fresh(stmt.name)
        self.inputs.append(ir.Input(name, ttype, stmt.span))
        scope[stmt.name] = name

    def tensor_type(self, t: ast.TensorType, scope: Scope) -> ir.TensorType:
        config = scope.config
        dims = []
        for d in t.dims:
            if isinstance(d, ast.Name) and d.id not in config:
                dims.append(d.id)  # a symbol: dynamic
                continue
            v = coerce(evaluate(d, config, "a dimension"), "int", d.span, "dimension").value
            if v <= 0:
                raise TieError(f"a dimension must be positive, got {v}", d.span)
            if v > MAX_SIZE:
                raise TieError(f"a dimension of {big(v)} does not fit in int64", d.span)
            dims.append(v)
        return ir.TensorType(t.dtype or self.registry.dtype, tuple(dims))

    def assign(self, stmt, scope: Scope):
        if isinstance(stmt, ast.Unpack):
            return self.unpack(stmt, scope)
        if self.is_child_list(stmt.value, scope):
            scope[stmt.name] = self.declare_list(stmt, scope)
            return
        kind = self.declared_kind(stmt.value, scope)
        if kind is not None:
            scope[stmt.name] = self.declare(stmt, kind, scope)
            return
        self.check_rebind(stmt.name, stmt.name_span, scope)
        if stmt.annotations:
            raise TieError("share/tie annotations go on layer declarations", stmt.annotations[0].span,
                           hint=f"'{stmt.name}' is a value; annotate the layer it comes from")
        before = len(self.g.nodes)
        result = self.operand(stmt.value, scope)
        if isinstance(result, tuple):
            raise TieError(f"this call returns {len(result)} values; bind them all: "
                           f"{', '.join(f'v{i}' for i in range(len(result)))} = …", stmt.value.span)
        if isinstance(result, str) and len(self.g.nodes) > before:  # `b = a` only aliases: no node to name
            result = self.g.rename(result, stmt.name)
        scope[stmt.name] = result

    def unpack(self, stmt: ast.Unpack, scope: Scope):
        for name, span in zip(stmt.names, stmt.name_spans):
            self.check_rebind(name, span, scope)
        result = self.operand(stmt.value, scope)
        values = result if isinstance(result, tuple) else (result,)
        last = self.g.nodes[-1] if self.g.nodes else None
        if len(values) == len(stmt.names) and isinstance(last, ir.Node) and last.op == "call" \
                and tuple(last.attrs["outputs"]) == values:  # the values take the names they are bound to
            for v in values:
                self.g.names.discard(v)
            values = tuple(self.g.fresh(n) for n in stmt.names)
            self.g.naming[values[0]] = self.g.naming.pop(last.name)
            self.g.nodes[-1] = ir.Node("call", values[0], last.inputs, ir.frozen({**last.attrs, "outputs": values}),
                                       last.span)
        elif len(values) == len(stmt.names) and all(isinstance(v, str) for v in values):
            values = self.g.rename_pieces(values, stmt.names)  # chunk/split: each piece its own name
        if len(values) != len(stmt.names):
            func = getattr(getattr(stmt.value, "func", None), "id", "")
            raise TieError(f"{len(stmt.names)} names for {len(values)} value(s)", stmt.span,
                           hint=f"{func} gives one value per piece" if func in ("chunk", "split")
                           else "a block call gives one value per expression in its `return`")
        for name, value in zip(stmt.names, values):
            if isinstance(value, CVal):
                raise TieError("only tensors can be unpacked", stmt.value.span)
            scope[name] = value

    def check_rebind(self, name: str, span: Span, scope: Scope):
        bound = scope.get(name)
        if isinstance(bound, (Instance, Copies, Items)):
            where = self.instances[bound.path.split(".")[0]].span if bound.path.split(".")[0] in self.instances \
                else span
            raise TieError(f"'{name}' names a layer; assigning a value to it would hide the layer", span,
                           notes=[(where, f"'{name}' is declared here")], hint="give the value another name")

    def declared_kind(self, value: ast.Expr, scope: Scope) -> str | None:
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            name = value.func.id
            if name in scope:
                return None
            if name in LAYERS:
                return name
            if name in self.blocks:
                return f"block:{name}"
        return None

    # ------------------------------------------------------------------ declarations
    def declare(self, stmt: ast.Assign, kind: str, scope: Scope) -> Instance:
        if reserved_member(stmt.name) and kind == "Parameter":  # an attribute, not a submodule, but as taken
            raise TieError(f"parameter name '{stmt.name}' is an nn.Module attribute; PyTorch cannot hold a "
                           "parameter by that name", stmt.name_span, hint=f"rename it, e.g. '{stmt.name.strip('_')}_param'")
        if reserved_member(stmt.name):
            raise TieError(f"layer name '{stmt.name}' is an nn.Module attribute; PyTorch cannot hold a submodule"
                           " by that name", stmt.name_span, hint=f"rename it, e.g. '{stmt.name.strip('_')}_layer'")
        existing = self.instances.get(stmt.name)
        if existing is not None:
            raise TieError(f"'{stmt.name}' is already declared", stmt.name_span,
                           notes=[(existing.span, "first declared here")], hint="pick another name")
        loops = tuple(i for i, shared, _ in self.loops if not shared)
        call: ast.Call = stmt.value
        if kind.startswith("block:"):
            inst, ref = self.declare_block(stmt, kind.split(":", 1)[1], call, scope, loops)
            layers, params = self.registry.totals[inst.block]
        else:
            inst, ref = self.declare_layer(stmt, kind, call, scope, loops)
            layers, params = 1, sum(math.prod(shape) for _, shape in LAYERS[kind].slots(inst.layer.config))
        copies = math.prod(n for _, shared, n in self.loops if not shared)
        self.totals.add(layers * copies, params * copies, stmt.span, [n for _, shared, n in self.loops if not shared])
        self.instances[stmt.name] = inst
        self.g.nodes.append(ir.Decl(stmt.name))
        shares, ties = [], []
        for ann in stmt.annotations:
            self.annotate(ann, ref, scope, stmt, shares, ties)
        self.relations(shares, ties)
        return ref

    def declare_layer(self, stmt, kind, call, scope, loops):
        spec = LAYERS[kind]
        bound = self.bind_config(spec.args, call, scope.config, kind)
        if bound.get("dtype") is not None and not bound["dtype"].value:  # the program's default
            bound["dtype"] = CVal.literal(self.registry.dtype)
        values = {k: v.value for k, v in bound.items()}
        check_layer(kind, values, call.span)
        name = stmt.name
        if kind == "Parameter" and loops:  # one tensor per copy would need a ParameterList, keyed apart
            raise TieError(f"a Parameter cannot be declared inside `repeat` (one '{name}' per copy)", stmt.name_span,
                           hint="declare it in a block the repeat instantiates, or use `repeat … share`")
        layer = ir.Layer(name, kind, ir.frozen(values), stmt.span, ir.frozen({k: v.src for k, v in bound.items()}))
        for slot, shape in spec.slots(values):
            self.index.add(ir.Param(ir.slot_key(name, slot), name, slot, tuple(shape), values["dtype"], stmt.span), loops)
        inst = ir.Instance(name, layer, None, ir.frozen(), loops, stmt.span)
        return inst, Instance(name, kind, stmt.span, id(stmt))

    def declare_block(self, stmt, name, call, scope, loops):
        block = self.blocks[name]
        sig = tuple(Arg(p.name, "any", None if p.default is not None else REQUIRED) for p in block.params)
        exprs = bind_args(sig, call, name)
        bound: dict[str, CVal] = {}
        given: dict[str, CVal] = {}
        for p in block.params:  # defaults may use earlier parameters: block B(d, hidden = 4 * d)
            x = exprs[p.name]
            if x is not None:
                bound[p.name] = given[p.name] = evaluate(x, scope.config, f"argument '{p.name}' of {name}")
            else:
                bound[p.name] = evaluate(p.default, bound, f"the default of '{p.name}'")
        sub = self.registry.get(name, tuple(v.value for v in bound.values()), call.span)
        for p, v in bound.items():  # a parameter the block bakes in, or unrolls by, is baked in here too
            if p in sub.unrolled:
                self.unrolled |= v.deps
            if p in sub.structural:
                self.structural |= v.deps
        for p in self.registry.declared[sub.key].params:
            self.index.add(ir.Param(f"{stmt.name}.{p.name}", f"{stmt.name}.{p.layer}", p.slot, p.shape, p.dtype,
                                    p.span), loops)
        inst = ir.Instance(stmt.name, None, sub.key, ir.frozen({k: v.src for k, v in given.items()}), loops, stmt.span)
        return inst, Instance(stmt.name, f"block:{name}", stmt.span, id(stmt), sub)

    def instance_at(self, path: str) -> Instance | None:
        """The layer or block instance at a local module path (`blk.3`, `tower.fc`), if it is one."""
        parts, instances, pending = path.split("."), self.instances, None
        enclosing = {i for i, _, _ in self.loops}
        i, inst = 0, None
        while i < len(parts):
            inst = instances.get(parts[i])
            if inst is None:
                return None
            i += 1
            if inst.items or (not inst.layer and not inst.block):  # a list: its child by index
                if i >= len(parts) or not parts[i].isdigit():
                    return None
                inst = ir.list_child(instances, inst, int(parts[i]))
                if inst is None:
                    return None
                i, pending = i + 1, True
                if i < len(parts):
                    if inst.block is None:
                        return None
                    instances = self.registry.subgraphs[inst.block].instance_map
                continue
            need = len([lp for lp in inst.loops if lp not in enclosing]) if pending is None else len(inst.loops)
            if len(parts) - i < need or not all(p.isdigit() for p in parts[i:i + need]):
                return None
            i += need
            pending = True
            if i < len(parts):
                if inst.block is None:
                    return None
                instances = self.registry.subgraphs[inst.block].instance_map
        if inst.layer is not None:
            return Instance(path, inst.layer.kind, inst.span, 0)
        sub = self.registry.subgraphs[inst.block]
        return Instance(path, f"block:{sub.definition}", inst.span, 0, sub)

    # ------------------------------------------------------------------ block calls
    def call_block(self, inst: Instance, call: ast.Call, scope: Scope):
        sub: ir.Subgraph = inst.definition
        if call.kwargs:
            raise TieError("a block call takes its inputs positionally", call.kwargs[0].span)
        args = [self.tensor(a, scope) for a in call.args]
        if len(args) != len(sub.inputs):
            block = self.blocks[sub.definition]
            raise TieError(f"block '{block.name}' takes {len(sub.inputs)} input(s), got {len(args)}", call.span,
                           notes=[(block.name_span, f"'{block.name}' is defined here")])
        base = inst.path.split(".")[0]
        outputs = [self.g.fresh(base) for _ in sub.outputs]
        self.g.naming[outputs[0]] = (base, None)
        attrs = {"instance": inst.path, "outputs": tuple(outputs), "arg_spans": tuple(a.span for a in call.args)}
        self.g.nodes.append(ir.Node("call", outputs[0], tuple(args), ir.frozen(attrs), call.span))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

def _default_src(expr: ast.Expr, own: dict[str, CVal]) -> str | None:
    """A default as Python source over the definition's own parameters (None if it is not one)."""
    try:
        return evaluate(expr, own, "a default").src
    except TieError:
        return None
