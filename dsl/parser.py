"""Text → AST. Lark LALR with the contextual lexer, building the AST while parsing.

The AST is built by an inline transformer (no intermediate parse tree), so parsing a large spec
costs about one bare Lark parse. Lark's exceptions stop here: they become `TieError`s with the
offending token's span and a readable list of what was expected.
"""
from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator
from importlib import resources
from typing import ClassVar

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from . import ast
from .diagnostics import Source, Span, TieError

DTYPES = ("f32", "f16", "bf16", "f64", "i32", "i64", "bool")
NORMS = ("l2", "l1")
TIE_KINDS = ("centroid",)  # a tie's optional word after λ; without it a tie is pairwise
_FLOAT_MAX_DIGITS = len(str(int(sys.float_info.max)))


def _tok_span(src: Source, tok: Token) -> Span:
    return Span(src, tok.line, tok.column, tok.end_line, tok.end_column)


def _join(a: Span, b: Span) -> Span:
    return Span(a.source, a.line, a.col, b.end_line, b.end_col)


class _Paren:
    """Post-lexer: drop newlines inside ( ) and [ ], so calls and lists may span lines.

    It also keeps the brackets still open before the token the parser is looking at (`opened`), so
    a syntax error can say which one is not closed.
    """

    always_accept = ("_NL",)
    _open: ClassVar = {"LPAR": 1, "LSQB": 1, "RPAR": -1, "RSQB": -1}
    _closer: ClassVar = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}

    def __init__(self) -> None:
        self.opened: list[Token] = []

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth, self.opened = 0, []
        for tok in stream:
            if tok.type == "_NL" and depth > 0:
                continue
            depth = max(0, depth + self._open.get(tok.type, 0))
            yield tok
            # updated after the parser has taken the token, so on an error it excludes that token
            if tok.type in self._closer:
                self.opened.append(tok)
            elif tok.type in ("RPAR", "RSQB", "RBRACE") and self.opened:
                self.opened.pop()

    def unclosed(self, tok_type: str) -> str | None:
        """A hint naming the innermost open bracket, if `tok_type` (a closer or $END) does not close it."""
        if not self.opened or self._closer[self.opened[-1].type] == tok_type:
            return None
        if tok_type not in ("RPAR", "RSQB", "RBRACE", "$END"):
            return None
        tok = self.opened[-1]
        return f"the '{tok}' at {tok.line}:{tok.column} is not closed"


MAX_NESTING = 64  # operands inside operands: calls, brackets, unary minus, right-hand operands
MAX_REPEAT_NESTING = 16  # repeats inside repeats


class _Builder(Transformer):
    """Callbacks named after grammar rules and aliases; each returns an AST node.

    Each expression's nesting is counted as it is built (`depth`): the compiler walks operands
    recursively, so a limit keeps it within Python's stack. A chain `a + b + … + z` is walked in
    a loop, so its left operand adds nothing: only what is nested inside an operand counts."""

    def __init__(self, src: Source):
        super().__init__(visit_tokens=False)
        self.src = src
        self.depth: dict[int, int] = {}

    def _nest(self, node, children=(), chain=None):
        d = 1 + max((self.depth.get(id(c), 0) for c in children if c is not None), default=0)
        if chain is not None:
            d = max(d, self.depth.get(id(chain), 0))
        if d > MAX_NESTING:
            raise TieError(f"this expression nests {d} levels deep; the limit is {MAX_NESTING}", node.span,
                           hint="split it into several assignments")
        self.depth[id(node)] = d
        return node

    def _span(self, node) -> Span:
        if isinstance(node, Token):
            return _tok_span(self.src, node)
        return node.span

    def _over(self, children) -> Span:
        parts = [c for c in children if c is not None and not isinstance(c, list)]
        return _join(self._span(parts[0]), self._span(parts[-1]))

    # --- expressions
    def number(self, c):
        text, span = str(c[0]), self._span(c[0])
        if not text.isdigit():
            value = float(text)
        else:  # longer than the largest float it is too large anyway, and int() refuses 4300+ digits
            value = int(text) if len(text) <= _FLOAT_MAX_DIGITS else math.inf
        if value > sys.float_info.max:  # a float literal past it would silently be inf
            shown = text if len(text) <= 24 else f"{text[:8]}… ({len(text)} characters)"
            raise TieError(f"the number {shown} is too large: the largest is about 1.8e308", span)
        return ast.Num(value, span)

    def string(self, c):
        return ast.Str(str(c[0])[1:-1], self._span(c[0]))

    def name(self, c):
        return ast.Name(str(c[0]), self._span(c[0]))

    def ident(self, c):  # a keyword standing for a name is a NAME from here on
        return Token.new_borrow_pos("NAME", str(c[0]), c[0])

    def _binop(op):
        def build(self, c):
            return self._nest(ast.BinOp(op, c[0], c[1], _join(c[0].span, c[1].span)), [c[1]], chain=c[0])

        return build

    add, sub, mul = _binop("+"), _binop("-"), _binop("*")
    div, floordiv, matmul = _binop("/"), _binop("//"), _binop("@")

    def neg(self, c):  # c: the '-' token (kept by `!?unary`), the operand
        return self._nest(ast.Neg(c[1], _join(self._span(c[0]), c[1].span)), [c[1]])

    def arglist(self, c):
        return list(c)

    def kwarg(self, c):
        kw = ast.Kwarg(str(c[0]), c[1], _join(self._span(c[0]), c[1].span))
        self.depth[id(kw)] = self.depth.get(id(c[1]), 0)
        return kw

    # `!?postfix` keeps the punctuation: call is [func, '(', args, ')'], attr [value, '.', NAME],
    # index [value, '[', expr, ']'], so each span runs to the closing bracket.
    def call(self, c):
        func, args = c[0], c[2] or []
        pos = tuple(a for a in args if not isinstance(a, ast.Kwarg))
        kws = tuple(a for a in args if isinstance(a, ast.Kwarg))
        return self._nest(ast.Call(func, pos, kws, _join(func.span, self._span(c[3]))), [func, *args])

    def attr(self, c):
        return self._nest(ast.Attr(c[0], str(c[2]), _join(c[0].span, self._span(c[2]))), [c[0]])

    def index(self, c):
        return self._nest(ast.Index(c[0], c[2], _join(c[0].span, self._span(c[3]))), [c[0], c[2]])

    def list(self, c):  # c: '[', items and commas (kept by `!?atom`), ']'
        items = tuple(x for x in c if x is not None and not isinstance(x, Token))
        return self._nest(ast.ListExpr(items, _join(self._span(c[0]), self._span(c[-1]))), items)

    def atom(self, c):  # only `( expr )` reaches here: the other atoms have aliases
        return c[1]

    # --- references and annotations
    def ref(self, c):
        parts = tuple(str(x) if isinstance(x, Token) else x for x in c)
        return ast.Ref(parts, self._over(c))

    def _strength(self, args, span: Span) -> tuple[ast.Expr, str, str]:
        pos = [a for a in args if not isinstance(a, ast.Kwarg)]
        kws = {k.name: k for k in args if isinstance(k, ast.Kwarg)}
        kind = "pairwise"
        if len(pos) == 2 and isinstance(pos[1], ast.Name) and pos[1].id in TIE_KINDS:
            kind = pos.pop().id
        if len(pos) != 1:
            raise TieError("tie takes one strength λ: tie(λ), tie(λ, centroid) or tie(λ, norm=l1)", span,
                           hint="for example: tie(0.01) TaskA.fc1, TaskB.fc1")
        norm = "l2"
        for key, kw in kws.items():
            if key != "norm":
                raise TieError(f"tie has no option '{key}'", kw.span, hint="the only option is norm=l1 or norm=l2")
            value = kw.value
            norm = value.id if isinstance(value, ast.Name) else value.value if isinstance(value, ast.Str) else ""
            if norm not in NORMS:
                raise TieError("norm must be l2 or l1", value.span)
        return pos[0], norm, kind

    def anchor_ref(self, c):  # c: 'anchor', '(', the key or None, ')' (kept by `!anchor_ref`)
        return ast.AnchorRef(None if c[2] is None else str(c[2])[1:-1], _join(self._span(c[0]), self._span(c[3])))

    def share_slot_ann(self, c):
        return ast.ShareAnn(str(c[0]), c[1], _join(self._span(c[0]), c[1].span))

    def share_all_ann(self, c):
        return ast.ShareAnn(None, c[0], c[0].span)

    def tie_ann(self, c):
        strength, norm, kind = self._strength(c[0], c[1].span)
        return ast.TieAnn(strength, norm, c[1], c[1].span, kind)

    # --- statements
    def tensor_type(self, c):
        dtype_tok, dims = c[0], tuple(d for d in c[1:] if d is not None)
        dtype = None
        if dtype_tok is not None:
            dtype = str(dtype_tok)
            if dtype not in DTYPES:
                raise TieError(f"unknown dtype '{dtype}'", self._span(dtype_tok),
                               hint="dtypes are " + ", ".join(DTYPES))
        first = dtype_tok if dtype_tok is not None else (dims[0] if dims else None)
        span = self._over([first, *dims]) if first is not None else Span(self.src, 0, 0, 0, 0)
        return ast.TensorType(dtype, dims, span)

    def input(self, c):
        return ast.Input(str(c[0]), c[1], _join(self._span(c[0]), c[1].span if c[1].span.line else self._span(c[0])))

    def assign(self, c):
        name = self._span(c[0])
        return ast.Assign(str(c[0]), c[1], tuple(c[2:]), _join(name, c[1].span), name)

    def unpack(self, c):
        names = [self._span(t) for t in c[:-1]]
        return ast.Unpack(tuple(str(t) for t in c[:-1]), c[-1], _join(names[0], c[-1].span), tuple(names))

    def append(self, c):
        name = self._span(c[0])
        return ast.Append(str(c[0]), c[1], _join(name, c[1].span), name)

    def body(self, c):
        return tuple(c)

    def _repeat(self, c, shared: bool):
        node = ast.Repeat(c[0], shared, c[1], c[0].span)
        d = 1 + max((self.depth.get(id(s), 0) for s in c[1] if isinstance(s, ast.Repeat)), default=0)
        if d > MAX_REPEAT_NESTING:
            raise TieError(f"repeats nest {d} deep here; the limit is {MAX_REPEAT_NESTING}", node.span)
        self.depth[id(node)] = d
        return node

    def repeat(self, c):
        return self._repeat(c, False)

    def repeat_shared(self, c):
        return self._repeat(c, True)

    def schedule(self, c):
        name, args = c[0], c[1] or []
        if any(isinstance(a, ast.Kwarg) for a in args):
            raise TieError("a schedule takes no keyword arguments", next(a for a in args if isinstance(a, ast.Kwarg)).span)
        return ast.Schedule(str(name), tuple(args), self._span(name))

    def repeat_scheduled(self, c):
        node = self._repeat([c[0], c[2]], False)
        scheduled = ast.Repeat(node.count, False, node.body, node.span, c[1])
        self.depth[id(scheduled)] = self.depth.pop(id(node))
        return scheduled

    def return_stmt(self, c):
        return ast.Return(tuple(c), self._over(c))

    def share_stmt(self, c):
        return ast.ShareStmt(tuple(c), self._over(c))

    def tie_stmt(self, c):
        refs = tuple(c[1:])
        strength, norm, kind = self._strength(c[0], refs[0].span)
        if isinstance(refs[0], ast.AnchorRef):
            raise TieError("a tie starts with a parameter or layer; an anchor is matched against it", refs[0].span,
                           hint='write the anchor after it: tie(0.01) fc.weight, anchor("fc.weight")')
        return ast.TieStmt(strength, norm, refs, self._over(refs), kind)

    # --- definitions
    def param(self, c):
        return ast.Param(str(c[0]), c[1], self._span(c[0]))

    def params(self, c):
        return tuple(p for p in c if p is not None)

    def _definition(kind):
        def build(self, c):
            name = c[0]
            params = c[1] if len(c) == 3 else ()
            return ast.Definition(kind, str(name), params, c[-1], self._span(name), self._span(name))

        return build

    model, block = _definition("model"), _definition("block")

    def start(self, c):
        defs = tuple(x for x in c if isinstance(x, ast.Definition))
        stmts = tuple(x for x in c if not isinstance(x, ast.Definition))
        return ast.Program(defs, stmts, Span(self.src, 1, 1, 1, 1))


_READABLE = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "$END": "end of file", "SEMICOLON": "';'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
    "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'", "DOT": "'.'",
}


def _terminal(name: str) -> str:
    if name in _READABLE:
        return _READABLE[name]
    try:  # a literal terminal (MINUS, STAR, keywords…) reads as its text
        pattern = _lark().get_terminal(name).pattern
    except KeyError:
        return name
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name


def _readable(terminals) -> str:
    names = sorted({_terminal(t) for t in terminals})
    if len(names) > 6:
        names = names[:6] + ["…"]
    return ", ".join(names)


def _describe(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "$END":
        return "end of file"
    return f"'{tok}'"


def _syntax_error(err: UnexpectedInput, src: Source) -> TieError:
    line, col = max(1, err.line if err.line > 0 else 1), max(1, err.column if err.column > 0 else 1)
    if isinstance(err, UnexpectedCharacters):
        ch = src.text[err.pos_in_stream] if err.pos_in_stream < len(src.text) else "?"
        hint = "strings use double quotes" if ch == "'" else None
        return TieError(f"unexpected character '{ch}'", Span(src, line, col, line, col + 1), hint=hint)
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        lines = [line.rstrip("\r") for line in src.text.split("\n")]
        while len(lines) > 1 and not lines[-1].strip():  # point at the last line with text
            lines.pop()
        last = len(lines)
        return TieError("unexpected end of file", Span(src, last, len(lines[-1]) + 1, last, len(lines[-1]) + 2),
                        hint=_POSTLEX.unclosed("$END") or "a '{' or '(' is probably not closed")
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    expected = set(err.expected) - {"_NL"} if tok.type != "_NL" else set(err.expected)
    span = Span(src, line, col, tok.end_line or line, (tok.end_column or col + 1))
    if tok.type == "_NL":
        span = Span(src, line, col, line, col + 1)
    hint = _POSTLEX.unclosed(tok.type)
    if hint is None and "COMMA" in expected and tok.type in ("NAME", "NUMBER"):
        hint = "is a ',' missing?"
    elif hint is None and tok.type == "EQUAL" and "EQUAL" not in expected:
        hint = "'=' declares or binds a name; it cannot appear here"
    message = f"unexpected {_describe(tok)}"
    if expected:
        message += f"; expected {_readable(expected)}"
    return TieError(message, span, hint=hint)


_LARK: Lark | None = None
_BUILDER = _Builder(Source("<none>", ""))
_POSTLEX = _Paren()
_LOCK = threading.Lock()


def _lark() -> Lark:
    global _LARK
    if _LARK is None:
        grammar = resources.files("tiec.grammars").joinpath("tie.lark").read_text()
        _LARK = Lark(grammar, parser="lalr", lexer="contextual", postlex=_POSTLEX,
                     maybe_placeholders=True, transformer=_BUILDER, cache=True)
    return _LARK


def parse(text: str, filename: str = "<string>") -> ast.Program:
    """Parse .tie source text into an `ast.Program`; raises `TieError` on bad input."""
    src = Source(filename, text)
    with _LOCK:  # the inline builder carries the current source
        parser = _lark()
        _BUILDER.src = src
        try:
            return parser.parse(text)
        except UnexpectedInput as err:
            raise _syntax_error(err, src) from None
        finally:
            _BUILDER.depth.clear()
