"""Elaboration: AST → IR. Blocks are inlined, repeats unrolled, names resolved.

Rule: a model body runs once, top to bottom. `name = Layer(...)` or `name = Block(...)` declares
an instance at module path `name` (inside a block, `<instance>.name`; inside a non-shared repeat,
`name.<i>`; inside `repeat … share`, one instance for every iteration). Calling an instance adds
nodes that use its parameters; calling it again reuses them (that is sharing). A block instance's
layers are declared when the block is instantiated; each call inlines its body against them.
Other assignments bind values (SSA: a rebinding is a new value). `share`/`tie` annotations and
statements become requests, solved by the sharing pass.
"""
from __future__ import annotations

from collections.abc import Mapping

from tiec.dsl import ast
from tiec.dsl.diagnostics import Span, TieError, did_you_mean

from . import ir
from .catalog import LAYERS, REQUIRED, Arg
from .config import CVal, coerce, evaluate
from .expressions import Binder, GraphBuilder, bind_args
from .refs import Copies, Instance, ParamIndex, Scope, Target, resolve
from .relations import share_requests, tie_requests


class _Return(Exception):
    def __init__(self, values):
        self.values = values


class ModelElaborator(Binder):
    """Builds one model's graph (and its share/tie requests) from its definition."""

    def __init__(self, definition: ast.Definition, blocks: Mapping[str, ast.Definition], config: dict):
        super().__init__(GraphBuilder(definition.name))
        self.definition = definition
        self.blocks = blocks
        self.config = config
        self.index = ParamIndex()
        self.instances: dict[str, Instance] = {}
        self.layers: list[ir.Layer] = []
        self.inputs: list[ir.Input] = []
        self.outputs: list[ir.Output] = []
        self.checks: list[ir.Check] = []
        self.shares: list[ir.ShareRequest] = []
        self.ties: list[ir.TieRequest] = []
        self.structural: set[str] = set()
        self.scope = Scope()
        self.active_blocks: list[str] = []
        self.replaying = False  # inside a later iteration of `repeat … share`

    # ------------------------------------------------------------------ driver
    def run(self) -> ir.Graph:
        d = self.definition
        self.scope = Scope(self.config)
        try:
            self.body(d.body, self.scope, prefix="", indices=(), mode="model")
        except _Return as ret:
            self.outputs = self.name_outputs(ret.values)
        if not self.outputs:
            raise TieError(f"model '{d.name}' has no return statement", d.name_span,
                           hint="end the model with: return <expression>")
        if not self.inputs:
            raise TieError(f"model '{d.name}' declares no input", d.name_span, hint="add: in x: [B, 784]")
        defaults: dict[str, CVal] = {}
        for p in d.params:  # as declared: a default may use earlier parameters (h = 4 * d)
            defaults[p.name] = evaluate(p.default, defaults, "a default")
        return ir.Graph(
            d.name, ir.frozen({k: v.value for k, v in self.config.items()}),
            ir.frozen({k: v.value for k, v in defaults.items()}),
            tuple(self.inputs), tuple(self.layers), tuple(self.index.params.values()), tuple(self.g.nodes),
            tuple(self.outputs), d.span, frozenset(self.structural), tuple(self.checks))

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
    def body(self, stmts, scope: dict, prefix: str, indices: tuple, mode: str, args: list | None = None):
        """Run statements. mode: "model" (declare + compute), "declare" (a block's layers),
        "call" (a block's computation against its declared layers)."""
        for stmt in stmts:
            if isinstance(stmt, ast.Input):
                self.input(stmt, scope, mode, args)
            elif isinstance(stmt, ast.Assign):
                self.assign(stmt, scope, prefix, indices, mode)
            elif isinstance(stmt, ast.Repeat):
                self.repeat(stmt, scope, prefix, indices, mode, args)
            elif isinstance(stmt, ast.Return):
                if mode == "declare":
                    return
                raise _Return([(self.tensor(v, scope), v) for v in stmt.values])
            elif isinstance(stmt, ast.ShareStmt):
                if mode != "call" and not self.replaying:
                    self.share_refs(stmt.refs, scope, stmt.span)
            elif isinstance(stmt, ast.TieStmt) and mode != "call" and not self.replaying:
                self.tie_refs(stmt, stmt.refs, scope)

    def input(self, stmt: ast.Input, scope: dict, mode: str, args: list | None):
        if mode == "declare":
            return
        ttype = self.tensor_type(stmt.type, scope)
        if mode == "model":
            if any(i.name == stmt.name for i in self.inputs):
                raise TieError(f"input '{stmt.name}' is declared twice", stmt.span)
            name = self.g.fresh(stmt.name)
            self.inputs.append(ir.Input(name, ttype, stmt.span))
            scope[stmt.name] = name
            return
        if not args:
            raise TieError(f"block input '{stmt.name}' has no argument", self.call_span,
                           notes=[(stmt.span, "the block declares it here")],
                           hint="pass one tensor per `in` declaration")
        value, span = args.pop(0)
        self.checks.append(ir.Check(value, ttype, span, stmt.span))
        scope[stmt.name] = value

    def tensor_type(self, t: ast.TensorType, scope: dict) -> ir.TensorType:
        config = scope.config
        dims = []
        for d in t.dims:
            if isinstance(d, ast.Name) and d.id not in config:
                dims.append(d.id)  # a symbol: dynamic
                continue
            v = coerce(evaluate(d, config, "a dimension"), "int", d.span, "dimension").value
            if v <= 0:
                raise TieError(f"a dimension must be positive, got {v}", d.span)
            dims.append(v)
        return ir.TensorType(t.dtype or "f32", tuple(dims))

    def assign(self, stmt: ast.Assign, scope: dict, prefix: str, indices: tuple, mode: str):
        value = stmt.value
        kind = self.declared_kind(value, scope)
        if kind is not None:
            inst = self.declare(stmt, kind, scope, prefix, indices, mode)
            scope[stmt.name] = inst
            return
        bound = scope.get(stmt.name)
        if isinstance(bound, (Instance, Copies)):
            raise TieError(f"'{stmt.name}' names a layer; assigning a value to it would hide the layer",
                           stmt.name_span, notes=[(self.instances[bound.path].span if bound.path in self.instances
                                                   else stmt.span, f"'{stmt.name}' is declared here")],
                           hint="give the value another name")
        if stmt.annotations:
            raise TieError("share/tie annotations go on layer declarations", stmt.annotations[0].span,
                           hint=f"'{stmt.name}' is a value; annotate the layer it comes from")
        if mode == "declare":
            config = scope.config
            try:  # config bindings such as `hidden = 4 * d` can size later layers
                scope[stmt.name] = evaluate(value, config)
            except TieError:
                pass
            return
        before = len(self.g.nodes)
        result = self.operand(value, scope)
        if isinstance(result, str) and len(self.g.nodes) > before:  # `b = a` only aliases: no node to name
            result = self.g.rename(result, stmt.name)
        scope[stmt.name] = result

    def declared_kind(self, value: ast.Expr, scope: dict) -> str | None:
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            name = value.func.id
            if name in scope:
                return None
            if name in LAYERS:
                return name
            if name in self.blocks:
                return f"block:{name}"
        return None

    def repeat(self, stmt: ast.Repeat, scope: dict, prefix: str, indices: tuple, mode: str, args):
        config = scope.config
        count = coerce(evaluate(stmt.count, config, "a repeat count"), "int", stmt.count.span, "repeat count")
        if count.value < 1:
            raise TieError(f"repeat count must be at least 1, got {count.value}", stmt.count.span)
        self.structural |= count.deps
        declared = self.declared_names(stmt.body, scope)
        replaying = self.replaying
        for i in range(count.value):
            inner = indices if stmt.shared else (*indices, i)
            # a shared repeat's later iterations reuse the first one's layers: its share and tie
            # statements would only restate the same relations, so they run once
            self.replaying = replaying or (stmt.shared and i > 0)
            self.body(stmt.body, scope, prefix, inner, mode, args)
        self.replaying = replaying
        if not stmt.shared:  # after the loop, a name stands for all its copies: blk[3]
            for name in declared:
                bound = scope.get(name)
                if isinstance(bound, (Instance, Copies)):
                    scope[name] = Copies(bound.path.rpartition(".")[0], count.value)

    def declared_names(self, stmts, scope: dict) -> list[str]:
        """Names declared as layers or blocks in `stmts`, nested repeats included."""
        names = []
        for s in stmts:
            if isinstance(s, ast.Assign) and self.declared_kind(s.value, scope) is not None:
                names.append(s.name)
            elif isinstance(s, ast.Repeat):
                names += self.declared_names(s.body, scope)
        return names

    # ------------------------------------------------------------------ declarations
    def declare(self, stmt: ast.Assign, kind: str, scope: dict, prefix: str, indices: tuple, mode: str) -> Instance:
        path = prefix + stmt.name + "".join(f".{i}" for i in indices)
        existing = self.instances.get(path)
        if existing is not None:
            if existing.decl_id == id(stmt):
                return existing  # a shared repeat's later iteration, or a block call
            raise TieError(f"'{stmt.name}' is already declared", stmt.name_span,
                           notes=[(existing.span, "first declared here")], hint="pick another name")
        if mode == "call":
            raise AssertionError(f"{path} was not declared")
        call: ast.Call = stmt.value
        config = scope.config
        if kind.startswith("block:"):
            inst = self.declare_block(stmt, kind, call, config, path)
        else:
            inst = self.declare_layer(stmt, kind, call, config, path)
        for ann in stmt.annotations:
            self.annotate(ann, inst, scope, stmt)
        return inst

    def declare_layer(self, stmt, kind, call, config, path) -> Instance:
        spec = LAYERS[kind]
        bound = self.bind_config(spec.args, call, config, kind)
        values = {k: v.value for k, v in bound.items()}
        for key in ("in_features", "out_features", "in_channels", "out_channels", "num_embeddings",
                    "embedding_dim", "normalized_shape", "embed_dim", "num_heads"):
            if key in values and values[key] <= 0:
                raise TieError(f"{kind} size '{key}' must be positive, got {values[key]}", call.span)
        if kind == "SelfAttention" and values["embed_dim"] % values["num_heads"]:
            raise TieError(f"SelfAttention: d={values['embed_dim']} is not divisible by heads={values['num_heads']}",
                           call.span)
        if kind == "Dropout" and not 0 <= values["p"] < 1:
            raise TieError(f"Dropout probability must be in [0, 1), got {values['p']}", call.span)
        layer = ir.Layer(path, kind, ir.frozen(values), stmt.span, ir.frozen({k: v.src for k, v in bound.items()}))
        self.layers.append(layer)
        for slot, shape in spec.slots(values):
            self.index.add(ir.Param(f"{path}.{slot}", path, slot, tuple(shape), "f32", stmt.span))
        inst = Instance(path, kind, stmt.span, id(stmt))
        self.instances[path] = inst
        return inst

    def declare_block(self, stmt, kind, call, config, path) -> Instance:
        name = kind.split(":", 1)[1]
        block = self.blocks[name]
        if name in self.active_blocks:
            raise TieError(f"block '{name}' instantiates itself", call.span)
        sig = tuple(Arg(p.name, "any", None if p.default is not None else REQUIRED) for p in block.params)
        exprs = bind_args(sig, call, name)
        bound: dict[str, CVal] = {}
        for p in block.params:  # defaults may use earlier parameters: block B(d, hidden = 4 * d)
            given = exprs[p.name]
            bound[p.name] = evaluate(given, config, f"argument '{p.name}' of {name}") if given is not None \
                else evaluate(p.default, bound, f"the default of '{p.name}'")
        inst = Instance(path, kind, stmt.span, id(stmt), block, dict(bound))
        self.instances[path] = inst
        self.active_blocks.append(name)
        try:
            self.body(block.body, Scope(bound), path + ".", (), "declare")
        finally:
            self.active_blocks.pop()
        return inst

    # ------------------------------------------------------------------ block calls
    def call_block(self, inst: Instance, call: ast.Call, scope: dict) -> str:
        block: ast.Definition = inst.definition
        if call.kwargs:
            raise TieError("a block call takes its inputs positionally", call.kwargs[0].span)
        args = [(self.tensor(a, scope), a.span) for a in call.args]
        n_inputs = sum(isinstance(s, ast.Input) for s in block.body)
        if len(args) != n_inputs:
            raise TieError(f"block '{block.name}' takes {n_inputs} input(s), got {len(args)}", call.span,
                           notes=[(block.name_span, f"'{block.name}' is defined here")])
        saved = self.call_span
        self.call_span = call.span
        try:
            self.body(block.body, Scope(inst.config), inst.path + ".", (), "call", args)
        except _Return as ret:
            if len(ret.values) != 1:
                raise TieError(f"block '{block.name}' returns {len(ret.values)} values; a call needs one",
                               call.span) from None
            return ret.values[0][0]
        finally:
            self.call_span = saved
        raise TieError(f"block '{block.name}' has no return statement", block.name_span)

    # ------------------------------------------------------------------ sharing and tying
    def target(self, ref: ast.Ref, scope: dict) -> Target:
        for part in ref.parts:  # an index fixes which copy is meant: the unrolled graph depends on it
            if not isinstance(part, str):
                self.structural |= evaluate(part, scope.config, "an index").deps
        return resolve(ref, scope, self.index, scope.config)

    def annotate(self, ann, inst: Instance, scope: dict, stmt: ast.Assign):
        own = Target({n[len(inst.path) + 1:]: n for n in self.index.under.get(inst.path, [])}, False,
                     stmt.name_span, stmt.name)
        if isinstance(ann, ast.ShareAnn) and ann.slot is not None:
            if ann.slot not in own.params:
                raise TieError(f"'{stmt.name}' has no parameter '{ann.slot}'", ann.span,
                               hint=did_you_mean(ann.slot, own.params) or f"its parameters: {', '.join(own.params)}")
            own = Target({"": own.params[ann.slot]}, False, stmt.name_span, f"{stmt.name}.{ann.slot}")
        other = self.target(ann.ref, scope)
        if isinstance(ann, ast.ShareAnn):
            self.add_shares(own, other, ann.span)
        else:
            self.add_tie(ann, [own, other], scope)

    def share_refs(self, refs, scope: dict, span: Span):
        targets = [self.target(r, scope) for r in refs]
        for other in targets[1:]:
            self.add_shares(targets[0], other, span)

    def add_shares(self, a: Target, b: Target, span: Span):
        self.shares += share_requests([(self.definition.name, a), (self.definition.name, b)], span)

    def tie_refs(self, stmt, refs, scope: dict):
        self.add_tie(stmt, [self.target(r, scope) for r in refs], scope)

    def add_tie(self, stmt, targets: list[Target], scope: dict):
        strength = coerce(evaluate(stmt.strength, scope.config, "a tie strength"), "float", stmt.strength.span, "λ")
        self.structural |= strength.deps  # a literal in tie_penalty
        model = self.definition.name
        self.ties += tie_requests([(model, t) for t in targets], strength.value, stmt.norm, stmt.span,
                                  stmt.strength.span)
