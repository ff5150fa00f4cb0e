"""The .tie abstract syntax tree: one frozen dataclass per grammar alias, each with a span.

The tree is purely syntactic. Whether `fc1 = Linear(784, 256)` declares a layer or `h = relu(x)`
binds a value is decided by the compiler, which knows the layer and block names.
"""
from __future__ import annotations

from dataclasses import dataclass

from .diagnostics import Span

# ----------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / // @
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Kwarg:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[Kwarg, ...]
    span: Span


@dataclass(frozen=True)
class Attr:
    value: Expr
    name: str
    span: Span


@dataclass(frozen=True)
class Index:
    value: Expr
    index: Expr
    span: Span


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


Expr = Num | Str | Name | BinOp | Neg | Call | Attr | Index | ListExpr

# ----------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Ref:
    """A path to a layer or parameter: `TaskA.fc2`, `enc.weight.T`, `blk[3].up`.

    `parts` holds names (str) and index expressions; a trailing `.T` is kept as the part "T".
    """

    parts: tuple[str | Expr, ...]
    span: Span


@dataclass(frozen=True)
class AnchorRef:
    """`anchor("fc.weight")` in a tie: a fixed tensor from a checkpoint, under that key (`key`
    None: `anchor()`, the key of the member it is matched with)."""

    key: str | None
    span: Span


TieRef = Ref | AnchorRef

# ----------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class TensorType:
    dtype: str | None  # None means f32
    dims: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Input:
    name: str
    type: TensorType
    span: Span


@dataclass(frozen=True)
class ShareAnn:
    """`share other` (slot None: every parameter) or `share slot = ref` on a declaration."""

    slot: str | None
    ref: Ref
    span: Span


@dataclass(frozen=True)
class TieAnn:
    strength: Expr
    norm: str
    ref: TieRef
    span: Span
    kind: str = "pairwise"  # "pairwise": Σ_{i<j}; "centroid": Σ_i against the members' mean


Annotation = ShareAnn | TieAnn


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr
    annotations: tuple[Annotation, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Unpack:
    """`a, b = Pair(x, y)`: one name per value a block call returns."""

    names: tuple[str, ...]
    value: Expr
    span: Span
    name_spans: tuple[Span, ...]


@dataclass(frozen=True)
class Append:
    """`block += T5Block(…)` in a repeat: one more child of the list `block` per iteration."""

    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Schedule:
    """How a repeat's iterations share their layers: `cycle(3)`, `sandwich`, `only(layer.attn)`."""

    kind: str
    args: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Repeat:
    count: Expr
    shared: bool
    body: tuple[Stmt, ...]
    span: Span
    schedule: Schedule | None = None  # `repeat N share <schedule> { … }`; None: all or nothing shared


@dataclass(frozen=True)
class Return:
    values: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class ShareStmt:
    refs: tuple[Ref, ...]
    span: Span


@dataclass(frozen=True)
class TieStmt:
    strength: Expr
    norm: str
    refs: tuple[TieRef, ...]
    span: Span
    kind: str = "pairwise"  # as in `TieAnn`


Stmt = Input | Assign | Unpack | Append | Repeat | Return | ShareStmt | TieStmt

# ----------------------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class Definition:
    kind: str  # "model" or "block"
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Program:
    definitions: tuple[Definition, ...]
    statements: tuple[ShareStmt | TieStmt, ...]
    span: Span
