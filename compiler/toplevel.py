"""Program-level elaboration: definitions, model parameters, and top-level share/tie statements.

Rule: block and model names are unique and distinct from builtin layers; every model parameter
has a default, which `overrides` may replace (an override must name some model's parameter).
Each model is elaborated on its own, so errors in independent models are all reported. Top-level
`share`/`tie` references start with a model name and resolve in that model's final scope.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import networkx as nx
from tiec.dsl import ast
from tiec.dsl.diagnostics import Span, TieError, TieWarning, did_you_mean, raise_all

from . import ir, lower
from .catalog import LAYERS, OP_SIGNATURES, reserved_member
from .config import CVal, evaluate
from .elaborate import Blocks, SubgraphElaborator
from .refs import ParamIndex, resolve
from .relations import share_requests, tie_requests
from .shapes import reshape_targets


def _definitions(program: ast.Program) -> tuple[dict, dict, list[TieError]]:
    blocks, models, errors, seen = {}, {}, [], {}
    for d in program.definitions:
        if d.name in seen:
            errors.append(TieError(f"'{d.name}' is defined twice", d.name_span,
                                   notes=[(seen[d.name].name_span, "first defined here")]))
            continue
        if d.name in LAYERS or d.name in OP_SIGNATURES:
            errors.append(TieError(f"'{d.name}' is a builtin name", d.name_span, hint="pick another name"))
            continue
        seen[d.name] = d
        (blocks if d.kind == "block" else models)[d.name] = d
        first: dict = {}
        for p in d.params:
            if p.name in first:  # point at the repeat, not the original
                errors.append(TieError(f"parameter '{p.name}' is declared twice", p.span,
                                       notes=[(first[p.name].span, "first declared here")]))
                break
            first[p.name] = p
        errors += _misplaced_statements(d.body, d.kind, top=True)
    return blocks, models, errors


def _misplaced_statements(stmts, kind: str, top: bool) -> list[TieError]:
    """`return` ends a body: nothing may follow it (it would silently never run), and a repeat
    has none of its own; nor does a repeat declare inputs (`in`)."""
    for i, stmt in enumerate(stmts):
        if isinstance(stmt, ast.Repeat):
            inner = _misplaced_statements(stmt.body, kind, top=False)
            if inner:
                return inner
        elif isinstance(stmt, ast.Return) and not top:
            return [TieError("'return' cannot be inside a repeat", stmt.span,
                             hint=f"return after the repeat, at the end of the {kind}")]
        elif isinstance(stmt, ast.Input) and not top:
            return [TieError("'in' cannot be inside a repeat", stmt.span,
                             hint=f"declare the {kind}'s inputs in its body, outside any repeat")]
        elif isinstance(stmt, ast.Return) and i + 1 < len(stmts):
            return [TieError(f"this statement follows the {kind}'s 'return', so it would never run",
                             stmts[i + 1].span, notes=[(stmt.span, "the return is here")],
                             hint=f"'return' must be the last statement of the {kind}")]
    return []


def _model_config(d: ast.Definition, overrides: Mapping) -> dict[str, CVal]:
    config: dict[str, CVal] = {}
    for p in d.params:
        if p.default is None:
            raise TieError(f"model parameter '{p.name}' needs a default", p.span,
                           hint=f"for example {p.name} = 128; override it with --set {p.name}=…")
        own = f"{d.name}.{p.name}"  # `--set Model.name=…` wins over `--set name=…`
        value = overrides[own] if own in overrides else overrides[p.name] if p.name in overrides else \
            evaluate(p.default, config, "a default").value
        config[p.name] = CVal(value, p.name, frozenset({p.name}))
    return config


def _unused_warnings(program: ir.ProgramIR, model: str, decl: lower.Declared) -> list[TieWarning]:
    """A layer no node of any copy calls, and no expression reads, is declared for nothing."""
    if lower.all_layers_used(program, model):  # the usual case, decided without visiting each copy
        return []
    used = lower.used_layers(program, model, decl.layers)
    holders = _holders(program, model, decl, used)
    unused: dict[object, list[ir.Layer]] = {}  # one warning per declaration, however many copies it has
    for layer in decl.layers:
        if layer.path not in used and layer.path not in holders and layer.kind != "Dropout":
            unused.setdefault(layer.span, []).append(layer)
    out = []
    for span, layers in unused.items():
        more = f", nor are its {len(layers) - 1} other copies" if len(layers) > 1 else ""
        what = "parameter" if layers[0].kind == "Parameter" else "layer"
        out.append(TieWarning(f"{what} '{layers[0].path}' is declared but never used{more}", span))
    return out


def _holders(program: ir.ProgramIR, model: str, decl: lower.Declared, used: set[str]) -> set[str]:
    """Layers holding a tensor that a used layer reads through a share (`share fc.weight,
    holder.weight.T`): the share requests' components that touch a used layer's parameter."""
    if not decl.shares:
        return set()
    graph = nx.Graph((ir.split(r.a)[1], ir.split(r.b)[1]) for r in decl.shares)
    layer_of = {p.name: p.layer for p in decl.params}
    out: set[str] = set()
    for component in nx.connected_components(graph):
        layers = {layer_of[name] for name in component if name in layer_of}
        if layers & used:
            out |= layers
    return out


def elaborate(program: ast.Program, overrides: Mapping[str, int | float] | None = None,
              dtype: str = "f32") -> ir.ProgramIR:
    """Build the `ProgramIR` of every model in `program`, model parameters overridden: `name`
    overrides that parameter of every model that has it, `Model.name` only that model's."""
    overrides = overrides or {}
    blocks, models, errors = _definitions(program)
    known = {p.name for d in models.values() for p in d.params}
    nowhere = Span(program.span.source, 0, 0, 0, 0)  # an override is not in the file: no line to show
    for name, value in overrides.items():
        model, dot, param = name.rpartition(".")
        if dot and model not in models:
            errors.append(TieError(f"--set {name}: no model '{model}'", nowhere,
                                   hint=did_you_mean(model, list(models)) or f"models: {', '.join(models)}"))
        elif dot and param not in (own := [p.name for p in models[model].params]):
            errors.append(TieError(f"--set {name}: model {model} has no parameter '{param}'", nowhere,
                                   hint=did_you_mean(param, own) or
                                   (f"parameters: {', '.join(own)}" if own else f"{model} takes no parameters")))
        elif not dot and name not in known:
            errors.append(TieError(f"--set {name}: no model has a parameter '{name}'", nowhere,
                                   hint=did_you_mean(name, known) or
                                   (f"parameters: {', '.join(sorted(known))}" if known else "no model takes parameters")))
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(TieError(f"--set {name}={value!r}: expected a number", nowhere))
    if len(models) > 1:  # every model becomes a submodule of the module holding them all
        errors += [TieError(f"model name '{n}' is an nn.Module attribute; it cannot be a submodule of the module "
                            "holding every model", d.name_span, hint="rename the model")
                   for n, d in models.items() if reserved_member(n)]
    if not models and not errors:
        errors.append(TieError("no model defined", program.span, hint="add: model Name { in x: [B, 4] … return … }"))
    raise_all(errors)

    registry = Blocks(blocks, dtype)
    structure, elaborators = {}, {}
    for name, d in models.items():
        try:
            el = SubgraphElaborator(d, registry, _model_config(d, overrides))
            structure[name] = el.run()
            elaborators[name] = el
        except TieError as e:
            errors.extend(getattr(e, "errors", (e,)))
    shaped = ir.ProgramIR(program.span.source, ir.frozen(), structure=ir.frozen(structure),
                          blocks=ir.frozen(registry.subgraphs))
    declared, defaults, indexes, shares, ties, warnings = {}, {}, {}, [], [], []
    for name, d in models.items():
        if name not in structure:
            continue
        decl = lower.declare(shaped, name, registry.declared)
        values: dict[str, CVal] = {}
        for p in d.params:  # as declared: a default may use earlier parameters (h = 4 * d)
            values[p.name] = evaluate(p.default, values, "a default")
        defaults[name] = {k: v.value for k, v in values.items()}
        declared[name] = decl
        if program.statements:  # top-level share/tie name flat paths: index them only then
            indexes[name] = ParamIndex()
            for p in decl.params:
                indexes[name].add(p)
        shares += decl.shares
        ties += decl.ties
        warnings += _unused_warnings(shaped, name, decl)
    for stmt in program.statements:
        try:
            targets = [("", ref) if isinstance(ref, ast.AnchorRef) else _top_target(ref, models, elaborators, indexes)
                       for ref in stmt.refs]
        except TieError as e:
            errors.append(e)
            continue
        if targets and None in targets:
            continue  # the model had errors of its own, already reported
        try:
            if isinstance(stmt, ast.ShareStmt):
                shares += share_requests(targets, stmt.span)
            else:
                ties += tie_requests(targets, _top_strength(stmt), stmt.norm, stmt.span, stmt.strength.span,
                                     stmt.kind)
        except TieError as e:
            errors.append(e)
    raise_all(errors)
    models_ = ir.FlatModels({m: (tuple(d.layers), tuple(d.params)) for m, d in declared.items()},
                            lambda m: reshape_targets(_lowered(shaped, m, declared[m], defaults[m])))
    return replace(shaped, models=models_, share_requests=tuple(shares), tie_requests=tuple(ties),
                   warnings=tuple(warnings))


def _lowered(program: ir.ProgramIR, model: str, decl: lower.Declared, defaults) -> ir.Graph:
    lower.check_flat_size(program, model)
    return lower.graph(program, model, decl, defaults)


def _top_target(ref: ast.Ref, models, elaborators, indexes):
    head = ref.parts[0]
    if not isinstance(head, str) or head not in models:
        hint = did_you_mean(head, models) if isinstance(head, str) else None
        raise TieError(f"'{head}' is not a model; top-level share and tie name Model.layer", ref.span,
                       hint=hint or f"models: {', '.join(models)}")
    if len(ref.parts) < 2:
        raise TieError(f"'{head}' is a whole model; name one of its layers or parameters", ref.span,
                       hint=f"for example {head}.<layer>")
    el = elaborators.get(head)
    if el is None:
        return None
    config = el.scope.config
    t = resolve(ref, el.scope, indexes[head], config, start=1)
    return head, t


def _top_strength(stmt: ast.TieStmt) -> float:
    try:
        strength = evaluate(stmt.strength, {}, "a tie strength").value
    except TieError as e:
        raise TieError(e.message, e.span, hint="outside a model no parameter is in scope: write λ as a number, "
                       "or put the tie inside the model") from None
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise TieError("tie strength must be a number", stmt.strength.span)
    return float(strength)
