"""Names and literals for emitted Python: nothing we write may shadow a builtin or an import.

`Namer` maps IR names (value names, model parameters) to Python identifiers, keeping a name
when it is safe and otherwise appending `_` until it is free. `literal` renders a config or
attribute value as Python source; `config_expr` renders a layer's `config_src` expression with
model parameters renamed the same way as the constructor's keyword arguments.
"""
from __future__ import annotations

import ast
import builtins
import keyword
import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

# Module-level names of every emitted file, besides the classes (which `class_names` picks).
EMITTED_GLOBALS = frozenset({"self", "F", "nn", "torch", "math", "causal_mask"})
# Locals the emitted methods and helpers bind (`Program.__init__`'s `peers`, `tie_penalty`'s
# `penalty` and `w`, `causal_mask`'s `x` and `T`). A class may not take one of these names: the
# local would shadow it inside a method that reads it (`peers = {}` then `self.peers = peers()`).
EMITTED_LOCALS = frozenset({"peers", "penalty", "w", "x", "T"})
RESERVED = (
    frozenset(keyword.kwlist) | (frozenset(keyword.softkwlist) - {"_"}) | frozenset(dir(builtins)) | EMITTED_GLOBALS
)


class Namer:
    """IR name → Python identifier, injective and deterministic within one scope."""

    def __init__(self, reserved: Iterable[str] = ()):
        self._taken = set(RESERVED) | set(reserved)
        self._names: dict[str, str] = {}

    def claim(self, names: Iterable[str]) -> Namer:
        """Give every safe name itself first, so renaming `input` never steals `input_`."""
        names = list(dict.fromkeys(names))
        for name in names:
            if _safe(name) and name not in self._taken:
                self._names[name] = name
                self._taken.add(name)
        for name in names:
            self(name)
        return self

    def __call__(self, name: str) -> str:
        if name not in self._names:
            self._names[name] = self.fresh(name)
        return self._names[name]

    def fresh(self, name: str) -> str:
        """A new identifier spelt like `name`, taken but bound to no IR name (for a name the
        generator introduces itself, such as the all-models class)."""
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "_"
        if not base.isidentifier():
            base = "_" + base
        candidate = base if not _dunder(base) else base.strip("_") or "v"
        while candidate in self._taken:
            candidate += "_"
        self._taken.add(candidate)
        return candidate

    def mapping(self) -> dict[str, str]:
        return dict(self._names)


def _dunder(name: str) -> bool:
    return name.startswith("__")  # Python keeps such names for itself (`__class__`, `__builtins__`, mangling)


def _safe(name: str) -> bool:
    return name.isidentifier() and not _dunder(name)


def literal(value: Any) -> str:
    """A Python expression for a config/attribute value (ints, floats, bools, tuples, strings)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "math.nan"
        if math.isinf(value):
            return "math.inf" if value > 0 else "-math.inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = [literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if isinstance(value, str) and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'  # the house's double quotes; repr would pick single ones
    return repr(value)


def doc_text(text: str) -> str:
    """`text` escaped for the inside of a triple-quoted docstring: a backslash, a quote or a
    character that is not printable (a newline, a NUL, a lone surrogate from a file name) becomes
    its escape, so text from outside the spec (a path) can never end the string or the line."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types (a float size where an int is expected must not slip through)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


class _Rename(ast.NodeTransformer):
    def __init__(self, names: Mapping[str, str]):
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.copy_location(ast.Name(self.names.get(node.id, node.id), node.ctx), node)


def config_expr(
    src: str | None, value: Any, params: Mapping[str, Any], names: Mapping[str, str]
) -> tuple[str, frozenset[str]]:
    """The expression a constructor passes for one config value.

    `src` (from `Layer.config_src`) is used when it reads only model parameters and evaluates, at
    the compiled configuration `params`, to exactly `value`; otherwise the literal `value` is
    emitted, so the emitted module is right at its defaults even if `src` is not Python we can
    check. Parameter names are rewritten through `names` (the constructor's renamed kwargs).

    Returns:
        The expression, and the model parameters it reads.
    """
    fallback = literal(value), frozenset()
    if src is None:
        return fallback
    code, used = _checked(src.strip())
    if code is None or not used <= set(params):
        return fallback
    try:
        got = eval(code, {"__builtins__": {}, "int": int, "math": math}, dict(params))
    except Exception:  # noqa: BLE001 - any failure means: not an expression we can vouch for
        return fallback
    if not _same(got, value):
        return fallback
    if any(names.get(n, n) != n for n in used):
        return ast.unparse(_Rename(names).visit(ast.parse(src.strip(), mode="eval"))), used
    return src.strip(), used


_LONGEST = 2_000  # a longer expression is written as its value: nobody reads it, and Python nests it too deep


@lru_cache(maxsize=4096)
def _checked(src: str):
    """`src` compiled, with the names it reads; (None, ∅) unless it is plain arithmetic over names.
    Cached: a large spec repeats the same few expressions thousands of times."""
    if len(src) > _LONGEST:
        return None, frozenset()
    try:
        tree = ast.parse(src, mode="eval")
    except (SyntaxError, RecursionError, MemoryError):
        return None, frozenset()
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    if not all(_allowed_call(c) for c in calls) or \
            sum(isinstance(n, ast.Attribute) for n in ast.walk(tree)) != sum(isinstance(c.func, ast.Attribute) for c in calls):
        return None, frozenset()
    functions = {id(n) for c in calls for n in ast.walk(c.func)}
    used = frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in functions)
    return compile(tree, "<config_src>", "eval"), used


# The calls a config expression's source may hold: `int(…)` of an integer-valued float, and the
# number functions of configuration expressions (compiler/config.py), which emitted code imports.
_MATH = frozenset({"exp", "log", "sqrt", "pow"})


def _allowed_call(call: ast.Call) -> bool:
    f = call.func
    if call.keywords:
        return False
    if isinstance(f, ast.Name):
        return f.id == "int"
    return isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "math" and f.attr in _MATH


def attr(base: str, name: str) -> str:
    """`base.name`, `base[3]` for a list index, or getattr for a name Python cannot spell."""
    if name.isdigit():
        return f"{base}[{name}]"
    if name.isidentifier() and not keyword.iskeyword(name):
        return f"{base}.{name}"
    return f"getattr({base}, {literal(name)})"


def chain(base: str, path: str) -> str:
    """`base` followed by a dotted module path; the empty path (a free parameter's owner at the
    top of a module) is `base` itself."""
    if not path:
        return base
    for part in path.split("."):
        base = attr(base, part)
    return base


def assign(target_base: str, name: str, value: str) -> tuple[str, str]:
    if name.isidentifier() and not keyword.iskeyword(name):
        return f"{target_base}.{name}", value
    return f"setattr({target_base}, {literal(name)}, {value})", ""
