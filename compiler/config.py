"""Configuration values: the numbers that size layers, count repeats and set options.

Rule: a config expression is integer/float arithmetic (`+ - * / //`, unary `-`) and the number
functions `exp`, `log`, `sqrt`, `pow` over literals, `true`/`false`, strings and the enclosing
model's or block's parameters. Each value remembers a
Python rendering over the model's parameters (`4 * d`) and which model parameters it depends on,
so emitted code can stay parameterised and the compiler knows what shapes the unrolled graph.
Every number is finite: a literal, an override or a result that is inf, nan or beyond the largest
float is an error where it appears.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tiec.dsl import ast
from tiec.dsl.diagnostics import Span, TieError, did_you_mean

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2}


@dataclass(frozen=True)
class CVal:
    value: Any
    src: str  # Python source over the model's parameters
    deps: frozenset = frozenset()  # model parameters it depends on
    prec: int = 9  # precedence of `src`'s outermost operator, for parenthesising

    @staticmethod
    def literal(value: Any) -> CVal:
        return CVal(value, _py_literal(value))


def _py_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, tuple):
        return "(" + ", ".join(_py_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _wrap(v: CVal, prec: int, right: bool = False) -> str:
    return f"({v.src})" if v.prec < prec or (right and v.prec == prec) else v.src


def _arith(op: str, a: Any, b: Any, span: Span) -> Any:
    if isinstance(a, (str, bool)) or isinstance(b, (str, bool)) or not isinstance(a, (int, float)) \
            or not isinstance(b, (int, float)):
        raise TieError(f"'{op}' needs numbers here", span)
    if op in ("/", "//") and b == 0:
        raise TieError("division by zero", span)
    value = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
             "//": lambda: a // b}[op]()
    return _finite(value, span, f"'{op}' gives")


def _finite(value: Any, span: Span, what: str) -> Any:
    """`value`, unless it is an inf or nan float or an integer too large for any float: nan passes
    `λ ≥ 0`, inf sizes reach the backends, and such an integer makes a later `float()` raise."""
    if isinstance(value, float) and not math.isfinite(value):
        raise TieError(f"{what} {value}: configuration values must be finite numbers", span)
    if isinstance(value, int) and abs(value) > sys.float_info.max:
        raise TieError(f"{what} a number larger than about 1.8e308: configuration values must be finite numbers",
                       span)
    return value


# Functions of numbers (`log(max_distance / 8)`, `pow(d, -0.5)`): Python's own, so a value is the
# one a reference written in Python computes. name → (argument count, function).
NUMBER_FUNCTIONS = {"exp": (1, math.exp), "log": (1, math.log), "sqrt": (1, math.sqrt), "pow": (2, math.pow)}


def is_number_call(expr: ast.Expr) -> bool:
    """Whether `expr` calls one of the number functions (which may also be tensor ops)."""
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in NUMBER_FUNCTIONS


def is_config(expr: ast.Expr, env: Mapping[str, CVal]) -> bool:
    """Whether `expr` is a configuration expression over `env`: literals, names in `env`, arithmetic
    and number functions only. Decides whether `log(x)` is folded to a number or is the tensor op."""
    if isinstance(expr, (ast.Num, ast.Str)):
        return True
    if isinstance(expr, ast.Name):
        return expr.id in env or expr.id in ("true", "false")
    if isinstance(expr, ast.Neg):
        return is_config(expr.operand, env)
    if isinstance(expr, ast.BinOp):
        return expr.op in _PREC and all(is_config(n.right, env) for n in left_spine(expr)) \
            and is_config(left_spine(expr)[-1].left, env)
    if is_number_call(expr):
        return all(is_config(a, env) for a in expr.args) and all(is_config(k.value, env) for k in expr.kwargs)
    return False


def apply_function(call: ast.Call, args: list[CVal]) -> CVal:
    """`log(v)`, `pow(a, b)`, …: the function of numbers, with its Python source over parameters; a
    value outside the function's domain or an infinite result is an error at the call."""
    name = call.func.id
    count, fn = NUMBER_FUNCTIONS[name]
    if call.kwargs:
        raise TieError(f"'{name}' of numbers takes its arguments by position", call.kwargs[0].span)
    if len(args) != count:
        raise TieError(f"'{name}' of numbers takes {count} argument(s), got {len(args)}", call.span)
    values = [a.value for a in args]
    if any(isinstance(v, (str, bool)) or not isinstance(v, (int, float)) for v in values):
        raise TieError(f"'{name}' needs numbers here", call.span)
    try:
        value = fn(*values)
    except OverflowError:
        value = math.inf
    except (ValueError, ZeroDivisionError):
        shown = ", ".join(repr(v) for v in values)
        raise TieError(f"{name}({shown}) is not a real number", call.span) from None
    src = f"math.{name}({', '.join(a.src for a in args)})"
    return CVal(_finite(value, call.span, f"'{name}' gives"), src, frozenset().union(*(a.deps for a in args)))


def left_spine(expr: ast.BinOp) -> list[ast.BinOp]:
    """The binary operations down the left of `expr`, outermost first (`((a + b) + c)` → [+c, +b])."""
    spine = []
    while isinstance(expr, ast.BinOp):
        spine.append(expr)
        expr = expr.left
    return spine


def combine(op: str, a: CVal, b: CVal, span: Span) -> CVal:
    """`a op b` for configuration values, with its Python source and dependencies."""
    prec = _PREC[op]
    value = _arith(op, a.value, b.value, span)
    return CVal(value, f"{_wrap(a, prec)} {op} {_wrap(b, prec, right=True)}", a.deps | b.deps, prec)


def evaluate(expr: ast.Expr, env: Mapping[str, CVal], what: str = "a configuration value") -> CVal:
    """Evaluate a config expression; names come from `env` (parameters in scope)."""
    if isinstance(expr, ast.Num):
        return CVal.literal(_finite(expr.value, expr.span, "this number is"))
    if isinstance(expr, ast.Str):
        return CVal.literal(expr.value)
    if isinstance(expr, ast.Name):
        if expr.id in env:
            _finite(env[expr.id].value, expr.span, f"'{expr.id}' is")
            return env[expr.id]
        if expr.id in ("true", "false"):
            return CVal.literal(expr.id == "true")
        raise TieError(f"unknown name '{expr.id}' in {what}", expr.span,
                       hint=did_you_mean(expr.id, env) or "only literals and parameters can appear here")
    if isinstance(expr, ast.Neg):
        v = evaluate(expr.operand, env, what)
        return CVal(_arith("-", 0, v.value, expr.span), f"-{_wrap(v, 3)}", v.deps, 3)
    if isinstance(expr, ast.BinOp) and expr.op in _PREC:
        spine = left_spine(expr)  # a long chain `d + 0 + … + 0` is walked in a loop, not recursively
        acc = evaluate(spine[-1].left, env, what)
        for node in reversed(spine):
            if node.op not in _PREC:
                raise TieError(f"expected {what}: a number or arithmetic over parameters", node.span)
            acc = combine(node.op, acc, evaluate(node.right, env, what), node.span)
        return acc
    if is_number_call(expr):
        return apply_function(expr, [evaluate(a, env, what) for a in expr.args])
    if isinstance(expr, ast.ListExpr):
        items = [evaluate(i, env, what) for i in expr.items]
        deps = frozenset().union(*(i.deps for i in items)) if items else frozenset()
        return CVal(tuple(i.value for i in items), "(" + ", ".join(i.src for i in items) + ",)", deps)
    raise TieError(f"expected {what}: a number or arithmetic over parameters", expr.span)


def coerce(v: CVal, kind: str, span: Span, name: str, minimum: int = 0) -> CVal:
    """Check a config value against an argument kind (int, float, eps, bool, pair, str…); pairs
    (kernel sizes, strides, paddings) must be at least `minimum`; an eps is a float ≥ 0."""
    val = v.value
    if kind == "ints":  # a list of integers (split sizes)
        if isinstance(val, int) and not isinstance(val, bool):
            val = (val,)
        shown = f"[{', '.join(map(str, val))}]" if isinstance(val, tuple) else repr(val)  # as the spec writes it
        if not (isinstance(val, tuple) and val and all(isinstance(x, int) and not isinstance(x, bool) for x in val)):
            raise TieError(f"'{name}' must be a list of integers such as [64, 64], got {shown}", span)
        if min(val) < minimum:
            raise TieError(f"'{name}' must be at least {minimum}, got {shown}", span)
        return CVal(val, v.src, v.deps)
    if kind in ("int", "opt_int"):
        if isinstance(val, float) and val.is_integer() and not isinstance(val, bool):
            return CVal(int(val), f"int({v.src})" if v.deps else str(int(val)), v.deps)
        if not isinstance(val, int) or isinstance(val, bool):
            raise TieError(f"'{name}' must be an integer, got {val!r}", span)
        return v
    if kind in ("float", "opt_float", "eps"):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise TieError(f"'{name}' must be a number, got {val!r}", span)
        _finite(val, span, f"'{name}' is")
        if kind == "eps" and val < 0:  # a negative eps can make a variance or a norm 0 (or less): nan
            raise TieError(f"'{name}' must be at least 0, got {val!r}", span)
        return CVal(float(val), v.src, v.deps, v.prec)
    if kind == "bool":
        if not isinstance(val, bool):
            raise TieError(f"'{name}' must be true or false, got {val!r}", span)
        return v
    if kind in ("pair", "opt_pair"):
        if isinstance(val, int) and not isinstance(val, bool):
            v = CVal((val, val), f"({v.src}, {v.src})" if v.deps else _py_literal((val, val)), v.deps)
        elif not (isinstance(val, tuple) and len(val) == 2 and all(isinstance(x, int) for x in val)):
            raise TieError(f"'{name}' must be an integer or a pair [a, b], got {val!r}", span)
        if min(v.value) < minimum:
            raise TieError(f"'{name}' must be at least {minimum}, got {val!r}", span)
        return v
    if kind == "str":
        if not isinstance(val, str):
            raise TieError(f"'{name}' must be a string, got {val!r}", span)
        return v
    raise AssertionError(kind)
