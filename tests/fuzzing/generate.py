"""Hypothesis strategies for fuzz inputs: grammar-generated, mutated and valid specs.

- `grammar_specs()`: strings of `grammars/tie.lark` (`hypothesis.extra.lark.from_lark` copes with
  the grammar as it is: its `_NL` terminal is an ordinary regex, and the post-lexer only drops
  newlines inside brackets, which generation need not imitate). Names, numbers and strings come
  from a small vocabulary, each with a leading space so that `model` and `M` never fuse into one
  name; newlines, comments and spaces from a few samples (drawing them from their regexes is
  slow and adds nothing the mutations do not).
- `fixture_mutations()`: a spec from `tests/fixtures/good`, `tests/fixtures/bad`, `examples/`
  or `valid_specs()`, with one to four edits: token-level (delete, duplicate, swap, replace by
  any token or by one of its own class, insert), line-level (drop, or splice a line from another
  spec), and two that keep more specs compiling: an input's dtype changed, or a symbol (`B`, `T`)
  replaced by a number everywhere, which lets the worker run the program.
- `valid_specs()` (`valid.py`): specs that must compile, with the generator's own count of their
  tensors.
"""
from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from .valid import valid_specs

__all__ = ["FIXTURES", "NAMES", "fixture_mutations", "grammar_specs", "tokens", "valid_specs"]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EXAMPLES = FIXTURES.parent.parent / "examples"
NAMES = (
    "x", "y", "h", "B", "T", "d", "n", "k", "M", "N", "fc", "fc1", "enc", "dec", "blk", "tower", "weight",
    "bias", "in_proj_weight", "out_proj", "Linear", "Conv2d", "Embedding", "LayerNorm", "RMSNorm",
    "SelfAttention", "Dropout", "relu", "tanh", "gelu", "silu", "softmax", "log_softmax", "flatten", "reshape",
    "transpose", "mean", "concat", "cosine_similarity", "positions", "max_pool2d", "avg_pool2d", "f32", "f16",
    "bf16", "f64", "i32", "i64", "bool", "true", "false", "l1", "l2", "norm", "dim", "eps", "approximate",
    "causal", "heads", "kernel", "stride", "padding", "self", "forward", "torch", "nn", "F", "None", "__init__",
    "x_1", "Program", "tie_penalty",
)
NUMBERS = ("0", "1", "2", "3", "4", "5", "8", "16", "0.5", ".5", "3.", "1e-5", "2e3", "1e400")
HUGE = ("65537", "10000000")  # sizes and repeat counts at and beyond the compiler's limits
STRINGS = ('"none"', '"tanh"', '"l1"', '"l2"', '"same"', '""', '"x"')
PUNCTUATION = ("(", ")", "[", "]", "{", "}", ",", ".", ":", ";", "=", "+", "-", "*", "/", "//", "@", "\n", " ", "\\\n")
KEYWORDS = ("model", "block", "in", "repeat", "share", "tie", "return")
ODD = ("'", '"', "\\", "\t", "\f", "\r", "\r\n", "\x00", "\u2028", "\ufeff", "é", "λ", "#", "\udcff")
VOCABULARY = NAMES + NUMBERS + HUGE + STRINGS + PUNCTUATION + KEYWORDS + ODD
_TOKEN = re.compile(r'[ \t\f]+|\n|#[^\n]*|"[^"\n]*"|\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+|\d+(?:[eE][+-]?\d+)?|\w+|//|.',
                    re.DOTALL)


@cache
def _grammar() -> Lark:
    text = resources.files("tiec.grammars").joinpath("tie.lark").read_text(encoding="utf-8")
    return Lark(text, parser="lalr", lexer="contextual")


def _spaced(words: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(words).map(lambda w: " " + w)


def grammar_specs() -> st.SearchStrategy[str]:
    """Sentences of the grammar (not necessarily meaningful: most fail to compile)."""
    return from_lark(_grammar(), explicit={
        "NAME": _spaced(NAMES), "NUMBER": _spaced(NUMBERS), "STRING": _spaced(STRINGS),
        "_NL": st.sampled_from(("\n", "\n    ", "\r\n", "\n\n\t")), "COMMENT": st.sampled_from(("#", "# c λ")),
        "__IGNORE_0": st.sampled_from((" ", "\t", "\f ")), "__IGNORE_1": st.sampled_from(("\\\n", "\\ \r\n")),
    })


DTYPES = ("", "f32", "f16", "bf16", "f64", "i32", "i64", "bool")
_INPUT = re.compile(r"\bin\s+(\w+)\s*:\s*(\w*)\s*\[")
_SYMBOL = re.compile(r"\b(B|T|N|H|W|S|D)\b")


@cache
def fixture_texts() -> tuple[str, ...]:
    paths = sorted((FIXTURES / "good").glob("*.tie")) + sorted((FIXTURES / "bad").glob("*.tie"))
    return tuple(p.read_text(encoding="utf-8") for p in [*paths, *sorted(EXAMPLES.glob("*.tie"))])


def _class(token: str, huge: bool) -> tuple[str, ...]:
    """Tokens of the same kind as `token`, for a replacement that may still parse."""
    if token[:1].isdigit() or token[:1] == ".":
        return NUMBERS + HUGE if huge else NUMBERS
    if token.isidentifier():
        return NAMES + KEYWORDS
    return PUNCTUATION if token in PUNCTUATION else _vocabulary(huge)


def _vocabulary(huge: bool) -> tuple[str, ...]:
    return VOCABULARY if huge else tuple(t for t in VOCABULARY if t not in HUGE)


def tokens(text: str) -> list[str]:
    """`text` cut into tokens (and the whitespace between them), losslessly."""
    return _TOKEN.findall(text)


@st.composite
def _mutation(draw, text: str, huge: bool) -> str:
    kind = draw(st.sampled_from(("delete", "duplicate", "swap", "replace", "insert", "splice", "drop_line",
                                 "same_class", "same_class", "retype", "concretise")))
    if kind == "retype" and _INPUT.search(text):
        found = draw(st.sampled_from(list(_INPUT.finditer(text))))
        return text[:found.start(2)] + draw(st.sampled_from(DTYPES)) + text[found.end(2):]
    if kind == "concretise" and _SYMBOL.search(text):
        symbol = draw(st.sampled_from(sorted(set(_SYMBOL.findall(text)))))
        return re.sub(rf"\b{symbol}\b", draw(st.sampled_from(("1", "2", "3", "4", "8"))), text)
    if kind in ("splice", "drop_line"):
        lines = text.split("\n")
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "drop_line":
            return "\n".join(lines[:i] + lines[i + 1:])
        donor = draw(st.sampled_from(fixture_texts())).split("\n")
        lines[i] = draw(st.sampled_from(donor))
        return "\n".join(lines)
    toks = tokens(text) or [""]
    i = draw(st.integers(0, len(toks) - 1))
    if kind == "delete":
        del toks[i]
    elif kind == "duplicate":
        toks.insert(i, toks[i])
    elif kind == "swap" and i + 1 < len(toks):
        toks[i], toks[i + 1] = toks[i + 1], toks[i]
    elif kind == "replace":
        toks[i] = draw(st.sampled_from(_vocabulary(huge)))
    elif kind == "same_class":
        toks[i] = draw(st.sampled_from(_class(toks[i], huge)))
    else:
        toks.insert(i, draw(st.sampled_from(_vocabulary(huge))))
    return "".join(toks)


@st.composite
def fixture_mutations(draw, huge: bool = True) -> str:
    """A fixture, example or valid spec with one to four edits; `huge`: numbers in the edits may
    be sizes and counts at the compiler's limits (which can take tens of seconds to build)."""
    text = draw(st.one_of(st.sampled_from(fixture_texts()), valid_specs().map(lambda spec: spec.text)))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(_mutation(text, huge))
    return text
