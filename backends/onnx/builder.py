"""One ONNX graph under construction: nodes, shared constants, and the IR-value → ONNX-name map.

Lowering rules (`ops.py`) talk only to a `GraphBuilder`. They read IR values (`value`, `dtype`,
`shape`), parameters (`weight`, `param`) and small constants (`scalar`, `ints`), and append
nodes (`node`). Whatever repeats is made once: equal constants share one initializer and a
position range shares one subgraph per symbolic length. A parameter read transposed stays a
reference to its stored initializer (`stored_transpose`) that matrix products consume through
Gemm's transA/transB; only a use that needs the transposed values themselves gets a Transpose node
(one per group), since every downstream optimizer folds `Transpose(initializer)` into a copy. Temporaries are named `~<n>`, which can never clash with an IR value (a
Python identifier) or a parameter (a dotted state-dict key).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper
from tiec.compiler.ir import LAYER_KINDS, Binding, Graph, Node, Param, TensorType
from tiec.dsl.diagnostics import Span, TieError

ONNX_DTYPES: Mapping[str, int] = {
    "f32": onnx.TensorProto.FLOAT, "f16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16,
    "f64": onnx.TensorProto.DOUBLE, "i32": onnx.TensorProto.INT32, "i64": onnx.TensorProto.INT64,
    "bool": onnx.TensorProto.BOOL,
}
_FLOATS = ("f32", "f16", "bf16", "f64")
_NUMPY_DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i32": np.int32, "i64": np.int64,
                 "bool": np.bool_}


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds a tiec dtype (bf16 through ml_dtypes, which onnx depends on)."""
    if dtype == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_NUMPY_DTYPES[dtype])


def fill_tensor(t: onnx.TensorProto, name: str, array: np.ndarray, dtype: str) -> onnx.TensorProto:
    """Make `t` the little-endian raw_data tensor `name`: `array` converted to `dtype`."""
    arr = np.asarray(array).astype(numpy_dtype(dtype), order="C", copy=False)  # (ascontiguousarray makes 0-d 1-d)
    if arr.dtype.byteorder == ">":
        arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
    t.name, t.data_type = name, ONNX_DTYPES[dtype]
    t.dims.extend(arr.shape)
    t.raw_data = arr.tobytes()
    return t


def literal_dtype(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return "i64" if isinstance(value, int) else "f32"


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_DTYPES[t.dtype], list(t.shape))


class GraphBuilder:
    """Appends ONNX nodes for one IR graph; see the module docstring."""

    def __init__(self, graph: Graph, types: Mapping[str, TensorType], binds: Mapping[str, Binding]):
        self.graph = graph
        self.types = types
        self.binds = binds
        self.params: dict[str, Param] = graph.param_map()
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._env: dict[str, str] = {}  # IR value -> ONNX name
        self._dtypes: dict[str, str] = {}  # IR value -> dtype, where ir.types is silent
        self._literals: dict[str, int | float] = {}
        self._cache: dict[Hashable, Any] = {}  # constants (initializers, seen from every scope) and top-level subgraphs
        self._scoped: list[dict[Hashable, Any]] = []  # per open scan body: subgraphs made there, seen only there
        self._fresh: set[str] = set()  # temporaries a rule may hand back to be renamed
        self._lazy_transposes: dict[str, str] = {}  # "W^T" name -> W, made a node only when read as a value
        self._count = 0
        # What each ONNX node was made for, parallel to `nodes` ("node 'h' (add)", its span), so a
        # checker failure can point at the spec; the lowering loop sets `blame` before each rule.
        self.blame: tuple[str, Span] = (f"model {graph.name}", graph.span)
        self.origins: list[tuple[str, Span]] = []
        # An output's name must not be taken by a different value (outputs may rename values).
        self._reserved = {o.name for o in graph.outputs if o.name != o.value}
        for inp in graph.inputs:
            self._env[inp.name] = inp.name
            self._dtypes[inp.name] = inp.type.dtype

    # ------------------------------------------------------------------ errors and lookups

    def fail(self, node: Node, message: str, hint: str | None = None) -> TieError:
        return TieError(f"ONNX export: node '{node.name}' ({node.op}): {message}", node.span, hint)

    def dtype(self, value: str) -> str | None:
        t = self.types.get(value)
        return t.dtype if t is not None else self._dtypes.get(value)

    def shape(self, value: str) -> tuple | None:
        t = self.types.get(value)
        return t.shape if t is not None else None

    def rank(self, value: str, node: Node) -> int:
        shape = self.shape(value)
        if shape is None:
            raise self.fail(node, f"needs the rank of '{value}', which ir.types lacks",
                            "run shape inference before exporting")
        return len(shape)

    def is_literal(self, value: str) -> bool:
        return value in self._literals

    def value(self, value: str, dtype: str | None = None) -> str:
        """The ONNX name holding IR value `value`; a literal becomes a scalar of `dtype`."""
        if value in self._literals:
            lit = self._literals[value]
            return self.scalar(lit, dtype or self.dtype(value) or literal_dtype(lit))
        if value not in self._env:
            raise KeyError(f"IR value {value!r} is used before it is defined")
        name = self._env[value]
        if name in self._lazy_transposes:
            return self._transpose_node(self._lazy_transposes[name])
        return name

    def stored_transpose(self, value: str) -> str | None:
        """The initializer whose transpose IR value `value` is (a parameter read in the other
        orientation than it is stored), without making a Transpose node; else None."""
        if value in self._literals:
            return None
        return self._lazy_transposes.get(self._env.get(value, ""))

    def param(self, name: str) -> Param | None:
        return self.params.get(name)

    def binding(self, name: str) -> Binding:
        return self.binds[name]

    # ------------------------------------------------------------------ making values

    def tmp(self) -> str:
        self._count += 1
        return f"~{self._count}"

    def node(self, op_type: str, inputs: Sequence[str | None], n: int = 1, out: str | None = None,
             **attrs: Any) -> Any:
        """Append one node; returns its output name (a list when `n` > 1). Trailing None inputs
        (absent optional inputs) are dropped."""
        ins = list(inputs)
        while ins and ins[-1] is None:
            ins.pop()
        outs = [out] if out is not None else [self.tmp() for _ in range(n)]
        if out is None:
            self._fresh.update(outs)
        self.nodes.append(helper.make_node(op_type, [i or "" for i in ins], outs, **attrs))
        self.origins.append(self.blame)
        return outs[0] if n == 1 else outs

    def node_via_f32(self, dtype: str | None, op_type: str, inputs: Sequence[str | None], **attrs: Any) -> str:
        """`node(op_type, inputs)`; in bf16, which opset 18's Conv, ConvTranspose, AveragePool,
        GlobalAveragePool, Sin and Cos do not take, the inputs are cast to f32 and the result back
        to bf16 once, as PyTorch's CPU kernels compute bf16 in f32 and round the result."""
        if dtype != "bf16":
            return self.node(op_type, inputs, **attrs)
        wide = [self.node("Cast", [v], to=ONNX_DTYPES["f32"]) if v else v for v in inputs]
        return self.node("Cast", [self.node(op_type, wide, **attrs)], to=ONNX_DTYPES["bf16"])

    def cached(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """`make()` once per key: a subgraph every user shares (never renamed afterwards). Made in a
        scan body, it is shared within that body only: the nodes it made live there."""
        for cache in (*reversed(self._scoped), self._cache):
            if key in cache:
                return cache[key]
        result = make()
        self._fresh.difference_update([result] if isinstance(result, str) else result)
        (self._scoped[-1] if self._scoped else self._cache)[key] = result
        return result

    def bind_input(self, value: str) -> None:
        """IR value `value` is a graph input under its own name (a scan body's state or slice)."""
        self._env[value] = value
        self._dtypes[value] = self.dtype(value) or "f32"

    def bind_output(self, value: str, name: str) -> None:
        """IR value `value` is ONNX value `name`, an output of the node just made."""
        self._fresh.discard(name)
        self._env[value] = name

    def made_in_scope(self, name: str) -> bool:
        """Whether a node of the current scan body makes ONNX value `name`."""
        return any(name in n.output for n in self.nodes)

    def enter_scope(self) -> tuple[list, list]:
        """Start a scan body: nodes go to fresh lists until `leave_scope` (give it what this returns)."""
        outer = (self.nodes, self.origins)
        self.nodes, self.origins = [], []
        self._scoped.append({})
        return outer

    def leave_scope(self, outer: tuple[list, list]) -> list[onnx.NodeProto]:
        """End a scan body: its nodes; the outer graph's lists are current again."""
        body = self.nodes
        self.nodes, self.origins = outer
        self._scoped.pop()
        return body

    def constant(self, array: np.ndarray, dtype: str) -> str:
        """A constant initializer, one per distinct (dtype, shape, bytes)."""
        arr = np.asarray(array).astype(numpy_dtype(dtype))
        key = ("const", dtype, arr.shape, arr.tobytes())
        if key not in self._cache:
            name = self.tmp()
            self.constants.append(fill_tensor(onnx.TensorProto(), name, arr, dtype))
            self._cache[key] = name
        return self._cache[key]

    def scalar(self, value: float, dtype: str) -> str:
        return self.constant(np.array(value), dtype)

    def ints(self, values: Sequence[int]) -> str:
        return self.constant(np.array(list(values), dtype=np.int64), "i64")

    def weight(self, name: str, transposed: bool = False) -> str:
        """Declared parameter `name` (a local state-dict key) as a value, optionally transposed:
        its group's initializer, read through one shared Transpose node when the orientations
        differ. Matrix products use `stored` instead, which never makes that node."""
        canonical, flip = self.stored(name, transposed)
        return self._transpose_node(canonical) if flip else canonical

    def stored(self, name: str, transposed: bool = False) -> tuple[str, bool]:
        """(initializer, flip) for declared parameter `name` read transposed or not: the group's
        one tensor, and whether the read is its transpose (never for a 1-D tensor)."""
        b = self.binds[name]
        return b.canonical, b.transposed != transposed and len(self.params[b.canonical].shape) >= 2

    def lazy_weight(self, name: str, transposed: bool = False) -> str:
        """`weight`, except that a transposed read is a name that becomes a Transpose node only if
        some rule reads it with `value` rather than `stored_transpose`."""
        canonical, flip = self.stored(name, transposed)
        if not flip:
            return canonical
        self._lazy_transposes[canonical + "^T"] = canonical
        return canonical + "^T"

    def transposed_value(self, value: str) -> str | None:
        """IR value `value` transposed without a Transpose node, when it is a 2-D initializer (its
        lazy transpose, as `lazy_weight` makes) or the lazy transpose of one (the initializer); else None."""
        name = self._env.get(value) if value not in self._literals else None
        if name in self._lazy_transposes:
            return self._lazy_transposes[name]
        p = self.params.get(name or "")
        if p is None or len(p.shape) != 2 or self.binds[name].canonical != name:
            return None
        self._lazy_transposes[name + "^T"] = name
        return name + "^T"

    def _transpose_node(self, canonical: str) -> str:
        # No perm: ONNX reverses the dims, as torch's `.T` does.
        out = canonical + "^T" if not self._scoped else None  # names are unique across every scope
        return self.cached(("T", canonical), lambda: self.node("Transpose", [canonical], out=out))

    def dim_key(self, value: str, axis: int) -> Hashable:
        """A key equal for two dims known equal: the symbolic (or fixed) dim from ir.types."""
        shape = self.shape(value)
        if shape is not None and -len(shape) <= axis < len(shape):
            return ("dim", shape[axis])
        return ("dim", self.value(value), axis)

    # ------------------------------------------------------------------ binding IR values

    def literal(self, node: Node, value: float) -> None:
        self._literals[node.name] = value

    def define(self, node: Node, result: str | None) -> None:
        """Bind IR value `node.name` to `result`. A temporary the last node just made takes the IR
        name itself; anything else (an initializer, an input, a shared subgraph) is aliased."""
        if result is None:
            return
        last = self.nodes[-1] if self.nodes else None
        if result in self._fresh and last is not None and result in last.output:
            name = node.name if node.name not in self._reserved else self.tmp()
            last.output[list(last.output).index(result)] = name
            self._fresh.discard(result)
            result = name
        self._env[node.name] = result
        if node.name not in self.types:
            self._dtypes[node.name] = self._fallback_dtype(node)

    def result_dtype(self, node: Node) -> str | None:
        """An arithmetic node's dtype: ir.types's, else PyTorch's promotion of its operands (a float
        literal, or true division, makes an integer tensor f32; a literal takes the tensor's dtype)."""
        if node.name in self.types:
            return self.types[node.name].dtype
        tensors = [self.dtype(i) for i in node.inputs if not self.is_literal(i)]
        floats = [t for t in tensors if t in _FLOATS]
        if floats or not tensors:
            return floats[0] if floats else None
        literals = [self._literals[i] for i in node.inputs if self.is_literal(i)]
        if node.op == "div" or any(isinstance(v, float) for v in literals):
            return "f32"
        return tensors[0]

    def _fallback_dtype(self, node: Node) -> str:
        if node.op in ("add", "sub", "mul", "div"):
            return self.result_dtype(node) or "f32"
        if node.op == "positions":
            return "i64"
        if node.op == "param":
            return self.params[node.attrs["param"]].dtype
        if node.op in LAYER_KINDS and f"{node.attrs['layer']}.weight" in self.params:
            return self.params[f"{node.attrs['layer']}.weight"].dtype
        for i in node.inputs:
            if not self.is_literal(i) and self.dtype(i):
                return self.dtype(i)
        return "f32"
