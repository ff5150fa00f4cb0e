"""The intermediate representation: small, closed, and shared by every pass and backend.

A `ProgramIR` keeps the structure the user wrote and, beside it, the flat view passes need.

Structured (`ProgramIR.structure`, `ProgramIR.blocks`): one `Subgraph` per model and per block
definition at each configuration it is instantiated with. A subgraph has its own inputs,
instances (layers and block instances, under local names), a body of `Node`s, `Decl`s and
`Loop`s, and outputs. A block instance is run by a `call` node, with any number of inputs and
outputs; `repeat N { … }` is a `Loop` whose body declares per-iteration instances (N of each);
`repeat N share { … }` is a `Loop` whose instances exist once. N stays an expression over the
subgraph's parameters (`Loop.count_src`).

Flat (`ProgramIR.models`, made by `lower.run` from the structure): one `Graph` per model, blocks
inlined and repeats unrolled. A graph has

- `layers`: every layer instance, by dotted module path (`tower.conv1`, `blk.3.up`, `blk.up`),
  with its evaluated configuration (keys are those of `LAYER_KINDS` below);
- `params`: every parameter slot those layers declare, named by its state-dict key within the
  model (`tower.conv1.weight`, `attn.out_proj.bias`). Declared, not deduplicated: sharing is a
  separate table;
- buffers (`compiler.buffers`): each layer's buffer slots (BatchNorm's running statistics; RoPE's
  computed, non-persistent `inv_freq`), made from `layers` and named like parameters; never
  shared, tied or counted as parameters;
- `nodes`: the dataflow, one `Node` per op application in source order, in SSA form (each value
  name is defined once; names are valid Python identifiers, unique in the graph).

Sharing and tying live beside the graphs, keyed by qualified parameter names (`Model.path.slot`):
`share_groups` (one tensor, many slots; orientation relative to the canonical member, which is
the first in source order) and `tie_groups` (a penalty over slots). `types` maps each model's
value names to their inferred `TensorType`. Passes fill these in; `verify` checks them.

Node ops (the closed set `OPS`), with their `attrs`:

    param        () -> W          {"param": local param name, "transposed": bool}   a weight as a value
    const        () -> scalar     {"value": int | float}                            a literal operand
    add sub mul div matmul (a, b) {}                                                torch broadcasting
    neg relu tanh sigmoid silu (x) {}
    gelu         (x)              {"approximate": "none" | "tanh"}
    softmax log_softmax (x)       {"dim": int}
    flatten      (x)              {"start_dim": int, "end_dim": int}
    reshape      (x)              {"shape": tuple[int]}   ONNX Reshape semantics: 0 copies the input
                                                           dim at that index, -1 is inferred
    transpose    (x)              {"dim0": int, "dim1": int}
    max_pool2d avg_pool2d (x)     {"kernel": (kh, kw), "stride": (sh, sw), "padding": (ph, pw)}
    mean         (x)              {"dim": int, "keepdim": bool}
    concat       (x1, …, xn)      {"dim": int}
    cosine_similarity (a, b)      {"dim": int, "eps": float}
    positions    (x)              {}        i64 [T]: 0 … T-1 where T is x's last dim
    exp log sqrt rsqrt sin cos erf abs (x) {}
    pow          (x, e)           {}                      e: a tensor or a const
    minimum maximum (a, b)        {}
    clamp        (x)              {"min": float | None, "max": float | None}
    eq ne lt le gt ge (a, b)      {}        bool; either input may be a const
    logical_and logical_or (a, b), logical_not (x) {}     bool
    where        (c, a, b)        {}        a, b: tensors or consts
    masked_fill  (x, mask)        {"value": float}
    cast         (x)              {"dtype": one of DTYPES}
    cast_like    (x, other)       {}        x in other's dtype
    <LayerKind>  (x)              {"layer": layer path}   a call of that layer instance
    call         (x1, …, xn)      {"instance": path, "outputs": (value names), "arg_spans": (spans)}
                                  a block instance run on its inputs (structured IR only)
    scan         (xs, s1, …, sk)  {"dim": int, "slice": name, "state": (k names), "results": (k names),
                                   "stacked": (m names), "outputs": (k + m names), "body": (Node, …)}
                                  a loop over a runtime dim (flat IR only): `body` runs once per slice of
                                  xs along dim, the slice bound to `slice` and state i to `state[i]`; the
                                  next step's state is `results`; outputs: the last step's state, then
                                  each `stacked` value of every step stacked along dim. Body nodes may
                                  read any value defined before the scan.

Dims are `int` or `str` (a symbol such as "B", "T", or a product such as "B*T"); symbols stay
dynamic in both backends.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from tiec.dsl.diagnostics import Source, Span, TieWarning

from . import catalog

Dim = int | str

DTYPES = ("f32", "f16", "bf16", "f64", "i32", "i64", "bool")
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i32": 4, "i64": 8, "bool": 1}

# Layer kinds and their configuration keys (values as PyTorch's constructor takes them), and the
# function ops: both from the one registry of what the language knows, `catalog`.
LAYER_KINDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {kind: tuple(a.target for a in spec.args) for kind, spec in catalog.LAYERS.items()})
FUNCTION_OPS = tuple(catalog.FUNCTION_OPS)
STRUCTURED_OPS = ("call",)
FLAT_CONTROL_OPS = ("scan",)
OPS = frozenset(FUNCTION_OPS) | frozenset(LAYER_KINDS) | frozenset(STRUCTURED_OPS) | frozenset(FLAT_CONTROL_OPS)


def frozen(mapping: Mapping | None = None) -> Mapping:
    """A read-only view of a fresh dict (IR attributes never change after construction)."""
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Input:
    name: str
    type: TensorType
    span: Span


@dataclass(frozen=True)
class Layer:
    """One layer instance. `config_src` renders each config value as a Python expression over
    the model's parameters (e.g. "4 * d"), for emitted code that a person can re-parameterise."""

    path: str
    kind: str
    config: Mapping[str, Any]
    span: Span
    config_src: Mapping[str, str] = field(default_factory=frozen)

    def __post_init__(self):
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}")


@dataclass(frozen=True)
class Param:
    name: str  # state-dict key within the model: "<layer path>.<slot>" (`slot_key`; a free Parameter's slot is "")
    layer: str
    slot: str  # "weight", "bias", "in_proj_weight", "out_proj.weight", …
    shape: tuple[int, ...]
    dtype: str
    span: Span


@dataclass(frozen=True)
class Buffer:
    """A layer's non-trained tensor (`catalog.BufferSlot`): named like a parameter, by its state-dict
    key within the model (`bn1.running_mean`), but never a member of a share or tie group, and not
    counted as a parameter. `persistent` buffers are in the state dict and the ONNX file; a buffer
    with a `rule` (RoPE's `inv_freq`) is computed from its layer's configuration, never loaded."""

    name: str
    layer: str
    slot: str
    shape: tuple[int, ...]
    dtype: str
    persistent: bool
    init: float
    span: Span
    rule: str = ""  # `buffers.BUFFER_RULES` key; "" is a constant fill of `init`


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    span: Span

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r} (node {self.name})")


@dataclass(frozen=True)
class Output:
    name: str  # the output's name in ONNX: a returned variable's name, else output, output_1, …
    value: str
    span: Span


@dataclass(frozen=True)
class Check:
    """A value must have the type a block's `in` declaration gives it (symbols match anything)."""

    value: str
    type: TensorType
    span: Span  # the call that passed the value
    declared: Span  # the `in` declaration


@dataclass(frozen=True)
class Graph:
    name: str
    config: Mapping[str, int | float]  # model parameters, overrides applied
    defaults: Mapping[str, int | float]  # as declared
    inputs: tuple[Input, ...]
    layers: tuple[Layer, ...]
    params: tuple[Param, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Output, ...]
    span: Span
    structural: frozenset = frozenset()  # parameters the unrolled graph depends on (repeat counts, …)
    checks: tuple[Check, ...] = ()  # declared types of block inputs, verified by the shapes pass

    @cached_property
    def _layers_by_path(self) -> dict[str, Layer]:
        return {layer.path: layer for layer in self.layers}

    @cached_property
    def _params_by_name(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}

    def layer(self, path: str) -> Layer:
        return self._layers_by_path[path]

    def param_map(self) -> Mapping[str, Param]:
        return MappingProxyType(self._params_by_name)


@dataclass(frozen=True)
class Member:
    """A parameter slot in a group. `transposed` is relative to the group's first member."""

    param: str  # qualified: "Model.path.slot"
    transposed: bool
    span: Span


@dataclass(frozen=True)
class ShareRequest:
    """`a` and `b` hold one tensor; `transposed`: a == b.T."""

    a: str
    b: str
    transposed: bool
    span: Span
    a_span: Span
    b_span: Span


@dataclass(frozen=True)
class Anchor:
    """A tie member that is not trained: the tensor under `key` in a checkpoint given when the module
    is built (`key` None until sharing solves it: the first member's own state-dict key)."""

    key: str | None
    span: Span


TIE_KINDS = ("pairwise", "centroid")  # Σ_{i<j} ‖r_i − r_j‖², or Σ_i ‖r_i − r̄‖² against the members' mean


@dataclass(frozen=True)
class TieRequest:
    strength: float
    norm: str  # "l2" (squared) or "l1"
    members: tuple[Member, ...]
    span: Span
    kind: str = "pairwise"  # one of TIE_KINDS
    anchors: tuple[Anchor, ...] = ()  # fixed members, read as the first member is


@dataclass(frozen=True)
class ShareGroup:
    id: int
    members: tuple[Member, ...]  # canonical first


@dataclass(frozen=True)
class TieGroup:
    id: int
    strength: float
    norm: str
    members: tuple[Member, ...]  # transposed relative to the first member
    span: Span
    kind: str = "pairwise"  # one of TIE_KINDS
    anchors: tuple[Anchor, ...] = ()  # fixed members (keys solved), each of the first member's shape


@dataclass(frozen=True)
class Instance:
    """A child of a subgraph: a layer (`layer` set) or a block instance (`block`: a subgraph key,
    `args`: its parameters as Python source over the parent's parameters). `loops`: the ids of
    the non-shared loops that declare it, outermost first: one copy per iteration of each.

    A list of children (`ds = [Conv2d(…), BatchNorm2d(…)]`) is an instance with neither `layer` nor
    `block`, whose `items` name its children, instances of their own called `ds.0`, `ds.1`. A child
    appended by `ds += Kind(…)` in a repeat (`appended`: that many copies, one per iteration) is
    named after the first index it takes (`ds.2`); its copies are `ds.2 … ds.{2 + appended - 1}`."""

    name: str
    layer: Layer | None
    block: str | None
    args: Mapping[str, str]
    loops: tuple[int, ...]
    span: Span
    items: tuple[str, ...] = ()  # a list's children, in order
    appended: int = 0  # an appended child: the number of copies


@dataclass(frozen=True)
class Decl:
    """The point in a body where an instance is declared (its layers, then its relations)."""

    name: str


@dataclass(frozen=True)
class Relations:
    """Share and tie requests written at this point of a body, over the subgraph's local names."""

    shares: tuple[ShareRequest, ...]
    ties: tuple[TieRequest, ...]


@dataclass(frozen=True)
class Schedule:
    """How a non-shared loop's copies share: iteration `i` holds the tensors of copy `source[i]`
    (`source[i] == i`: its own) for the slots under `paths` (every slot when `paths` is empty)."""

    kind: str  # "cycle", "cycle_rev", "sequence", "sandwich", "only"
    distinct: int  # the number of copies that own their tensors
    source: tuple[int, ...]
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Over:
    """What a loop over a runtime dimension steps through: the slices of `source` along `dim` (as
    written: negative counts from the end), one per step, named `slice` in the body. `stacked`:
    (value after the loop, the body value), each body value of every step stacked along that dim."""

    source: str
    dim: int
    slice: str
    stacked: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Loop:
    """`repeat count { body }`. `carried`: (value before the loop, the body's name for it, the
    body's result), one per name the body rebinds that existed before; `exports`: (value after
    the loop, the body value it is), one per name the body binds; both follow the last iteration."""

    id: int
    count: int
    count_src: str
    shared: bool
    body: tuple[Any, ...]  # Node | Decl | Relations | Loop
    carried: tuple[tuple[str, str, str], ...]
    exports: tuple[tuple[str, str], ...]
    span: Span
    schedule: Schedule | None = None  # a non-shared loop whose copies share by this schedule
    # `repeat x_t in unbind(x, dim) { … }`: a shared loop run once per slice (`count` 0: known only at
    # run time; `count_src` the dim as written)
    over: Over | None = None


@dataclass(frozen=True)
class Subgraph:
    """A model, or a block definition at one configuration (`key`: unique in the program)."""

    key: str
    kind: str  # "model" | "block"
    definition: str  # the name in the spec
    params: Mapping[str, Any]  # parameter → value
    defaults: Mapping[str, str | None]  # parameter → its default as Python source (None: required)
    inputs: tuple[Input, ...]
    instances: tuple[Instance, ...]
    body: tuple[Any, ...]  # Node | Decl | Relations | Loop
    outputs: tuple[Output, ...]
    naming: Mapping[str, tuple[str, str | None]]  # value → (the base its name was made from, the user's name)
    structural: frozenset  # parameters baked into the body as literals (a new value needs a recompile)
    counts: tuple[tuple[str, int, str], ...]  # (instance, index, count source): an index the spec uses
    span: Span
    unrolled: frozenset = frozenset()  # parameters the flat view depends on: `structural`, counts, children's

    @cached_property
    def instance_map(self) -> dict[str, Instance]:
        return {i.name: i for i in self.instances}


@dataclass(frozen=True)
class ProgramIR:
    source: Source
    models: Mapping[str, Graph]
    share_requests: tuple[ShareRequest, ...] = ()
    tie_requests: tuple[TieRequest, ...] = ()
    share_groups: tuple[ShareGroup, ...] = ()
    tie_groups: tuple[TieGroup, ...] = ()
    types: Mapping[str, Mapping[str, TensorType]] = field(default_factory=frozen)
    warnings: tuple[TieWarning, ...] = ()
    structure: Mapping[str, Subgraph] = field(default_factory=frozen)  # model → its subgraph
    blocks: Mapping[str, Subgraph] = field(default_factory=frozen)  # key → block subgraph
    # subgraph key → the types of its values, as first inferred (a model's, or a block's first copy's)
    local_types: Mapping[str, Mapping[str, TensorType]] = field(default_factory=frozen)


def slot_key(layer: str, slot: str) -> str:
    """A parameter's state-dict key: `<layer>.<slot>`, or the path itself for a free parameter
    (a `Parameter` declaration, whose one slot is "")."""
    return f"{layer}.{slot}" if slot else layer


def qualify(model: str, local: str) -> str:
    return f"{model}.{local}"


def split(qualified: str) -> tuple[str, str]:
    model, _, local = qualified.partition(".")
    return model, local


# Views over the IR (lazily lowered flat graphs, paths, bindings), kept beside it and re-exported here.
from .ir_views import (  # noqa: F401
    Binding,
    FlatModels,
    FlatTypes,
    bindings,
    declared_layers,
    declared_params,
    list_child,
    resolve_path,
    step,
    ties,
    walk_nodes,
)
