"""Resolving references (`enc.weight.T`, `TaskA.fc2`, `blk[3].up`) to parameter slots.

Rule: the first name is looked up in scope (a layer or block instance, or a repeated layer's list
of copies; at top level, a model); each `.name` or `[i]` that follows extends the module path; a
final `.T` reads a 2-D parameter transposed. A path naming one parameter is a parameter target;
a path naming a layer or block instance is a module target, standing for all its parameters,
matched slot by slot (by path relative to the module) against another module.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tiec.dsl import ast
from tiec.dsl.diagnostics import Span, TieError, did_you_mean

from .config import CVal, coerce, evaluate
from .ir import Param


@dataclass
class Instance:
    """A declared layer or block instance, at a module path."""

    path: str
    kind: str  # a layer kind, or "block:<Name>"
    span: Span
    decl_id: int  # identity of the declaring statement (a repeat re-visits it)
    definition: object = None  # the block's ast.Definition
    config: dict = field(default_factory=dict)  # a block's parameter values (CVal)


@dataclass(frozen=True)
class Copies:
    """The copies a non-shared `repeat` made of one declaration: `path.0 … path.N-1`."""

    path: str
    count: int
    src: str = ""  # the count as Python source over the definition's parameters


@dataclass(frozen=True)
class Items:
    """A list of children: `path.0 … path.{count-1}`; the first `written` are the list's own
    elements, the rest (`run`: the appended child's name) appended by `+=` in one repeat."""

    path: str
    count: int
    written: int
    run: str | None = None
    run_src: str = ""  # the appended copies' count as Python source over the definition's parameters
    open: bool = False  # the repeat that appends to it has not closed yet


class Scope(dict):
    """Names in scope (values, layers, config), keeping the config values (CVal) in a side table
    so that config evaluation never rescans the whole scope."""

    def __init__(self, initial: Mapping[str, object] | None = None):
        super().__init__()
        self.config: dict[str, CVal] = {}
        for k, v in (initial or {}).items():
            self[k] = v

    def __setitem__(self, key: str, value: object) -> None:
        super().__setitem__(key, value)
        if isinstance(value, CVal):
            self.config[key] = value
        else:
            self.config.pop(key, None)


@dataclass(frozen=True)
class Target:
    """What a reference names: one parameter (`param`), or every parameter under `path`."""

    params: Mapping[str, str]  # relative slot path ("" for a single parameter) → parameter name
    transposed: bool
    span: Span
    label: str  # the reference as written


class ParamIndex:
    """Parameters of one model or block by name, and by every module path that contains them.

    Inside a non-shared loop a copy's parameters are named as the current iteration sees them
    (`fc.weight`). When the loop closes, only indexed references can reach them (`fc[2].weight`):
    rather than naming every copy, the index remembers the loop's count under the copy's name
    and reads `fc.2.weight` back as `fc.weight`, so a loop of a million copies costs one entry.
    """

    def __init__(self) -> None:
        self._params: dict[str, Param] = {}
        self._under: dict[str, dict[str, None]] = {}
        self.pending: dict[str, tuple[int, ...]] = {}  # a name declared in open loops → those loops
        self.counts: dict[str, list[int]] = {}  # an instance name → its copies' counts, outermost first
        self.lists: set[str] = set()  # names of lists of children
        self.runs: dict[str, tuple[int, int]] = {}  # a list → (first index, count) of its appended copies
        self.params = _Named(self, self._params, self._param)
        self.under = _Named(self, self._under, self._names)

    def add(self, p: Param, pending: tuple[int, ...] = ()) -> None:
        self._params[p.name] = p
        if pending:
            self.pending[p.name] = pending
        parts = p.name.split(".")
        for i in range(1, len(parts)):
            self._under.setdefault(".".join(parts[:i]), {})[p.name] = None

    def expand(self, loop: int, count: int) -> None:
        """`loop` has closed after `count` iterations: its copies are reached by index from now on."""
        heads = set()
        for name, pend in list(self.pending.items()):
            if pend[-1] == loop:
                head, start = name.split(".", 2)[:2]
                if head in self.lists:  # an appended child: `head.{start + i}`
                    self.runs[head] = (int(start), count)
                else:
                    heads.add(head)
                if len(pend) > 1:
                    self.pending[name] = pend[:-1]
                else:
                    del self.pending[name]
        for head in heads:
            self.counts.setdefault(head, []).insert(0, count)

    def template(self, name: str) -> tuple[str, list[str]] | None:
        """`blk.3.up.weight` → (`blk.up.weight`, ["3"]) when `blk` has copies; None if an index is
        missing or out of range. A name without copies is its own template."""
        head, _, rest = name.partition(".")
        if head in self.runs:
            start, count = self.runs[head]
            k, _, tail = rest.partition(".")
            if k.isdigit() and start <= int(k) < start + count:
                return ".".join(p for p in (head, str(start), tail) if p), [k]
        counts = self.counts.get(head)
        if not counts:
            return name, []
        parts = rest.split(".") if rest else []
        idx = parts[:len(counts)]
        if len(idx) < len(counts) or not all(i.isdigit() and int(i) < n for i, n in zip(idx, counts)):
            return None
        return ".".join([head, *parts[len(counts):]]), idx

    def _param(self, name: str, found: Param) -> Param:
        head, _, rest = name.partition(".")
        if name == found.name:
            return found
        if head in self.runs:
            k = rest.split(".", 1)[0]
            return Param(name, ".".join([head, k, *found.layer.split(".")[2:]]), found.slot, found.shape,
                         found.dtype, found.span)
        depth = len(self.counts.get(head, ()))
        layer_rest = ".".join(found.layer.split(".")[1:])
        idx = rest.split(".")[:depth]
        return Param(name, ".".join([head, *idx, *([layer_rest] if layer_rest else [])]), found.slot, found.shape,
                     found.dtype, found.span)

    def _names(self, path: str, found: dict[str, None]) -> dict[str, None]:
        t = self.template(path)
        if t is None or not t[1]:
            return found
        head = path.split(".", 1)[0]
        if head in self.runs:
            return {".".join([head, t[1][0], *n.split(".")[2:]]): None for n in found}
        return {".".join([head, *t[1], *n.split(".")[1:]]): None for n in found}


class _Named:
    """A read-only mapping over an index's templates that answers for indexed names too."""

    def __init__(self, index: ParamIndex, table: dict, convert):
        self.index, self.table, self.convert = index, table, convert

    def get(self, name: str, default=None):
        t = self.index.template(name)
        if t is None or t[0] not in self.table:
            return default
        return self.convert(name, self.table[t[0]])

    def __getitem__(self, name: str):
        out = self.get(name)
        if out is None:
            raise KeyError(name)
        return out

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self):
        return iter(self.table)

    def values(self):
        return self.table.values()


def render(ref: ast.Ref) -> str:
    out = ""
    for part in ref.parts:
        out += f".{part}" if isinstance(part, str) else "[…]"
    return out.lstrip(".")


def module_path(ref: ast.Ref, scope: Mapping[str, object], config: Mapping[str, CVal],
                start: int = 0) -> tuple[str, bool]:
    """The module path a reference spells, and whether it ends in `.T`."""
    parts = list(ref.parts[start:])
    transposed = parts[-1] == "T" and len(parts) > 1
    if transposed:
        parts = parts[:-1]
    head = parts[0]
    label = render(ref)
    if not isinstance(head, str):
        raise TieError("a reference starts with a name", ref.span)
    bound = scope.get(head)
    if isinstance(bound, (Instance, Copies, Items)):
        path = bound.path
    elif bound is None:
        names = [k for k, v in scope.items() if isinstance(v, (Instance, Copies, Items))]
        raise TieError(f"unknown layer '{head}' in '{label}'", ref.span,
                       hint=did_you_mean(head, names) or "layers must be declared before they are referenced")
    else:
        raise TieError(f"'{head}' is a value, not a layer or parameter", ref.span,
                       hint="share and tie take layers (fc1) or parameters (fc1.weight)")
    for part in parts[1:]:
        if isinstance(part, str):
            path += f".{part}"
            continue
        i = coerce(evaluate(part, config, "an index"), "int", part.span, "index").value
        if isinstance(bound, Copies) and path == bound.path and not 0 <= i < bound.count:
            raise TieError(f"index {i} is out of range: '{head}' has {bound.count} copies", part.span)
        if isinstance(bound, Items) and path == bound.path:
            if bound.open:
                raise TieError(f"'{head}' is still growing here; index it after the repeat that appends to it",
                               part.span)
            if not 0 <= i < bound.count:
                raise TieError(f"index {i} is out of range: '{head}' has {bound.count} children", part.span,
                               hint=f"its children are {head}[0] … {head}[{bound.count - 1}]")
        if isinstance(bound, Instance) and path == bound.path:
            raise TieError(f"'{head}' is one layer, not a list of copies; it cannot be indexed", part.span,
                           hint=f"refer to it as '{head}' (a layer declared in `repeat … share` has one copy)")
        path += f".{i}"
    return path, transposed


def resolve(ref: ast.Ref, scope: Mapping[str, object], index: ParamIndex, config: Mapping[str, CVal],
            start: int = 0) -> Target:
    """Resolve `ref.parts[start:]`, the first looked up in `scope`, to a `Target`."""
    label = render(ref)
    path, transposed = module_path(ref, scope, config, start)
    if path in index.params:
        p = index.params[path]
        if transposed and len(p.shape) != 2:
            raise TieError(f"'.T' needs a 2-D parameter; '{path}' has shape {list(p.shape)}", ref.span)
        return Target({"": path}, transposed, ref.span, label)
    if path in index.under:
        if transposed:
            raise TieError(f"'.T' applies to one 2-D parameter, not to the layer '{path}'", ref.span,
                           hint=f"name the parameter: {path}.weight.T")
        names = index.under[path]
        return Target({n[len(path) + 1:]: n for n in names}, False, ref.span, label)
    bound = scope.get(ref.parts[start])
    if isinstance(bound, Instance) and bound.path == path and not bound.kind.startswith("block:"):
        raise TieError(f"{bound.kind} '{label}' has no parameters to share or tie", ref.span,
                       notes=[(bound.span, f"'{label}' is declared here")],
                       hint="without affine=true it keeps no weight or bias" if "Norm" in bound.kind else None)
    known = list(index.params) + list(index.under)
    raise TieError(f"'{label}' names no layer or parameter", ref.span,
                   hint=did_you_mean(path, known) or _slots_hint(path, index))


def _slots_hint(path: str, index: ParamIndex) -> str | None:
    layer = path.rpartition(".")[0]
    if layer in index.under:
        slots = ", ".join(n[len(layer) + 1:] for n in index.under[layer])
        return f"'{layer}' has parameters: {slots}"
    return None


def pair_up(a: Target, b: Target, what: str) -> list[tuple[str, str, bool]]:
    """Match two targets slot by slot → (param of a, param of b, b read transposed).
    A layer with a single parameter also matches a single parameter."""
    if ("" in a.params) != ("" in b.params) and len(a.params) == len(b.params) == 1:
        return [(next(iter(a.params.values())), next(iter(b.params.values())), a.transposed != b.transposed)]
    if set(a.params) != set(b.params):
        if "" in a.params or "" in b.params:
            raise TieError(f"cannot {what} a single parameter with a whole layer: '{a.label}' and '{b.label}'",
                           b.span, hint="name one parameter on each side, or a layer on each side")
        only_a = sorted(set(a.params) - set(b.params))
        only_b = sorted(set(b.params) - set(a.params))
        detail = "; ".join(x for x in (
            f"only '{a.label}' has {', '.join(only_a)}" if only_a else "",
            f"only '{b.label}' has {', '.join(only_b)}" if only_b else "") if x)
        raise TieError(f"cannot {what} '{a.label}' and '{b.label}': their parameters differ ({detail})", b.span,
                       notes=[(a.span, f"'{a.label}' is here")])
    return [(a.params[k], b.params[k], a.transposed != b.transposed) for k in a.params]
