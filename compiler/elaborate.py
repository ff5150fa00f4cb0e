"""Elaboration: AST → structured IR. Each definition's body runs once per configuration.

Rule: a model, and a block at each distinct set of parameter values it is instantiated with,
becomes one `Subgraph`, whose body runs once, top to bottom. `name = Layer(...)` or
`name = Block(...)` declares an instance under the local name `name`: inside a non-shared
`repeat`, one copy per iteration (`name[i]` after the loop); inside `repeat … share`, one instance
for every iteration. Calling a layer adds a node; calling a block instance adds a `call` node
whose outputs are the block's return values. A `repeat` becomes a `Loop` whose body runs once
here: a name it rebinds is carried from one iteration to the next. Other assignments bind values
(SSA: a rebinding is a new value). `share`/`tie` annotations and statements become requests over
local names, placed in the body where they were written; `lower` solves them per copy.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

from tiec.dsl import ast
from tiec.dsl.diagnostics import Span, TieError, did_you_mean

from . import ir, lower
from .catalog import LAYERS, REQUIRED, Arg, reserved_member
from .config import CVal, coerce, evaluate
from .expressions import Binder, GraphBuilder, bind_args
from .refs import Copies, Instance, ParamIndex, Scope, Target, resolve
from .relations import share_requests, tie_requests

MAX_BLOCK_NESTING = 32  # block instances inside block instances
MAX_SIZE = 2**63 - 1  # a size, dimension or repeat count: what int64 holds
MAX_LAYERS = 200_000  # layers of one model once every non-shared repeat is unrolled
MAX_PARAMS = 10**10  # parameters one model declares (before sharing): 40 GB in f32
LOCAL = ""  # the qualifier of a subgraph's own requests: `lower` re-qualifies them per copy


class _Return(Exception):
    def __init__(self, values):
        self.values = values


class Blocks:
    """The program's block subgraphs, built on demand: one per definition and parameter values."""

    def __init__(self, definitions: Mapping[str, ast.Definition]):
        self.definitions = definitions
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
        self.totals[sub.key] = (el.layer_count, el.param_count)
        self.declared[sub.key] = lower.declared(sub, self.subgraphs, self.declared)
        return sub


class SubgraphElaborator(Binder):
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
        self.layer_count = 0  # layers and parameters of one instance, every non-shared repeat unrolled
        self.param_count = 0
        self._loop_ids = itertools.count()
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
        return ir.Subgraph(
            self.key, d.kind, d.name, ir.frozen({k: v.value for k, v in self.config.items()}), ir.frozen(defaults),
            tuple(self.inputs), tuple(self.instances.values()), tuple(self.g.nodes), tuple(self.outputs),
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
                raise TieError(f"a dimension of {_big(v)} does not fit in int64", d.span)
            dims.append(v)
        return ir.TensorType(t.dtype or "f32", tuple(dims))

    def assign(self, stmt, scope: Scope):
        if isinstance(stmt, ast.Unpack):
            return self.unpack(stmt, scope)
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
        if len(values) != len(stmt.names):
            raise TieError(f"{len(stmt.names)} names for {len(values)} value(s)", stmt.span,
                           hint="a block call gives one value per expression in its `return`")
        for name, value in zip(stmt.names, values):
            if isinstance(value, CVal):
                raise TieError("only tensors can be unpacked", stmt.value.span)
            scope[name] = value

    def check_rebind(self, name: str, span: Span, scope: Scope):
        bound = scope.get(name)
        if isinstance(bound, (Instance, Copies)):
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

    def repeat(self, stmt: ast.Repeat, scope: Scope):
        count = coerce(evaluate(stmt.count, scope.config, "a repeat count"), "int", stmt.count.span, "repeat count")
        if count.value < 1:
            raise TieError(f"repeat count must be at least 1, got {count.value}", stmt.count.span)
        if count.value > MAX_SIZE:
            raise TieError(f"repeat count {_big(count.value)} does not fit in int64", stmt.count.span,
                           hint="docs/language.md lists the limits")
        self.unrolled |= count.deps
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
                                    stmt.count.span))
        if not stmt.shared:  # after the loop, a name stands for all its copies: blk[3]
            for name in _declared_names(stmt.body, self, scope):
                if isinstance(scope.get(name), (Instance, Copies)):
                    scope[name] = Copies(name, count.value, count.src)
            self.index.expand(loop_id, count.value)

    # ------------------------------------------------------------------ declarations
    def declare(self, stmt: ast.Assign, kind: str, scope: Scope) -> Instance:
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
        self.count(layers * copies, params * copies, stmt)
        self.instances[stmt.name] = inst
        self.g.nodes.append(ir.Decl(stmt.name))
        shares, ties = [], []
        for ann in stmt.annotations:
            self.annotate(ann, ref, scope, stmt, shares, ties)
        self.relations(shares, ties)
        return ref

    def count(self, layers: int, params: int, stmt: ast.Assign) -> None:
        """Keep the unrolled totals within `MAX_LAYERS` and `MAX_PARAMS`, at the declaration that passes them."""
        self.layer_count += layers
        self.param_count += params
        where = [f"repeat {n}" for _, shared, n in self.loops if not shared]
        hint = f"inside {' × '.join(where)}: copies count too; " if where else ""
        if self.layer_count > MAX_LAYERS:
            raise TieError(f"this makes {self.layer_count:,} layers once repeats are unrolled; the limit is "
                           f"{MAX_LAYERS:,}", stmt.span, hint=hint + "`repeat … share` makes one layer for every "
                           "iteration")
        if self.param_count > MAX_PARAMS:
            raise TieError(f"this makes {_big(self.param_count)} parameters; the limit is {MAX_PARAMS:,}",
                           stmt.span, hint=hint + "docs/language.md lists the limits")

    def declare_layer(self, stmt, kind, call, scope, loops):
        spec = LAYERS[kind]
        bound = self.bind_config(spec.args, call, scope.config, kind)
        values = {k: v.value for k, v in bound.items()}
        for key, v in values.items():
            for x in v if isinstance(v, tuple) else (v,):
                if isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_SIZE:
                    raise TieError(f"{kind} '{key}' = {_big(x)} does not fit in int64", call.span,
                                   hint="docs/language.md lists the limits")
        for key in ("in_features", "out_features", "in_channels", "out_channels", "num_embeddings",
                    "embedding_dim", "normalized_shape", "embed_dim", "num_heads"):
            if key in values and values[key] <= 0:
                raise TieError(f"{kind} size '{key}' must be positive, got {values[key]}", call.span)
        if kind == "SelfAttention" and values["embed_dim"] % values["num_heads"]:
            raise TieError(f"SelfAttention: d={values['embed_dim']} is not divisible by heads={values['num_heads']}",
                           call.span)
        if kind == "Dropout" and not 0 <= values["p"] < 1:
            raise TieError(f"Dropout probability must be in [0, 1), got {values['p']}", call.span)
        name = stmt.name
        layer = ir.Layer(name, kind, ir.frozen(values), stmt.span, ir.frozen({k: v.src for k, v in bound.items()}))
        for slot, shape in spec.slots(values):
            self.index.add(ir.Param(f"{name}.{slot}", name, slot, tuple(shape), "f32", stmt.span), loops)
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

    # ------------------------------------------------------------------ sharing and tying
    def target(self, ref: ast.Ref, scope: Scope) -> Target:
        self.note_indices(ref, scope)
        return resolve(ref, scope, self.index, scope.config)

    def note_indices(self, ref: ast.Ref, scope: Scope):
        """An index fixes which copy is meant: the constructor must have that many copies."""
        for part in ref.parts:
            if not isinstance(part, str):
                self.structural |= evaluate(part, scope.config, "an index").deps
        head = scope.get(ref.parts[0]) if isinstance(ref.parts[0], str) else None
        if isinstance(head, Copies) and len(ref.parts) > 1 and not isinstance(ref.parts[1], str):
            i = coerce(evaluate(ref.parts[1], scope.config, "an index"), "int", ref.parts[1].span, "index").value
            if 0 <= i < head.count:
                self.counts.append((head.path, i, head.src))

    def annotate(self, ann, inst: Instance, scope: Scope, stmt: ast.Assign, shares: list, ties: list):
        own = Target({n[len(inst.path) + 1:]: n for n in self.index.under.get(inst.path, [])}, False,
                     stmt.name_span, stmt.name)
        if isinstance(ann, ast.ShareAnn) and ann.slot is not None:
            if ann.slot not in own.params:
                raise TieError(f"'{stmt.name}' has no parameter '{ann.slot}'", ann.span,
                               hint=did_you_mean(ann.slot, own.params) or f"its parameters: {', '.join(own.params)}")
            own = Target({"": own.params[ann.slot]}, False, stmt.name_span, f"{stmt.name}.{ann.slot}")
        other = self.target(ann.ref, scope)
        if isinstance(ann, ast.ShareAnn):
            shares += share_requests([(LOCAL, own), (LOCAL, other)], ann.span)
        else:
            ties += self.tie([own, other], ann, scope)

    def share_refs(self, refs, scope: Scope, span: Span) -> list[ir.ShareRequest]:
        targets = [(LOCAL, self.target(r, scope)) for r in refs]
        return share_requests(targets, span)

    def tie_refs(self, stmt, refs, scope: Scope) -> list[ir.TieRequest]:
        return self.tie([self.target(r, scope) for r in refs], stmt, scope)

    def tie(self, targets: list[Target], stmt, scope: Scope) -> list[ir.TieRequest]:
        strength = coerce(evaluate(stmt.strength, scope.config, "a tie strength"), "float", stmt.strength.span, "λ")
        self.structural |= strength.deps  # a literal in tie_penalty
        return tie_requests([(LOCAL, t) for t in targets], strength.value, stmt.norm, stmt.span, stmt.strength.span)


def _big(n: int) -> str:
    return f"{n:,}" if abs(n) < 10**24 else f"{n:.3e}"


def _default_src(expr: ast.Expr, own: dict[str, CVal]) -> str | None:
    """A default as Python source over the definition's own parameters (None if it is not one)."""
    try:
        return evaluate(expr, own, "a default").src
    except TieError:
        return None


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


def _declared_names(stmts, el: SubgraphElaborator, scope: Scope) -> list[str]:
    """Names declared as layers or blocks in `stmts`, nested repeats included."""
    names = []
    for s in stmts:
        if isinstance(s, ast.Assign) and el.declared_kind(s.value, scope) is not None:
            names.append(s.name)
        elif isinstance(s, ast.Repeat):
            names += _declared_names(s.body, el, scope)
    return names
