"""`tiec dedup`: store each tensor of an ONNX file from any exporter once.

Rules:
- Two initializers of one dtype are one tensor when their bytes are equal (same shape), or when
  one is the other transposed (2-D). Candidates are found by a hash of the bytes (of the
  transposed bytes, for a 2-D tensor whose transposed shape occurs), then compared byte for byte.
- The first of a set, in file order, is kept (an initializer named in an existing `tiec.groups`
  manifest before any other); a copy's readers are moved onto it. A byte-equal copy is renamed. A
  transposed copy is read in the kept orientation by a form no tool folds back into a copy:
  `Gemm` flips `transA`/`transB`, and `MatMul(X, Wᵀ)` becomes `Gemm(X, W, transB=1)` (X of rank
  2) or `Reshape → Gemm(transB=1) → Reshape` (any rank). A transposed copy with any other reader
  (a `Gather`, an `Add`, `MatMul(Wᵀ, X)` with X not 2-D) is kept, or kept instead of the other
  when the other's readers can all be moved. Initializers that are also graph inputs (overridable)
  or outputs are never merged; a name a subgraph redefines is not rewritten inside it.
- The result must pass the ONNX checker, and onnxruntime must give the same outputs for the input
  and the result on random inputs (rtol 1e-3, atol 1e-5), or nothing is written.
- The `tiec.groups` metadata lists each merged set (kept initializer first), as `tiec export`
  writes it, so the file can be audited; other metadata stays.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tiec.backends.onnx.compare import same_outputs
from tiec.dsl.diagnostics import Source, Span, TieError

from tiec.output import check_output, write_output

MAX_FILE_BYTES = 2**31 - 1  # protobuf's limit on one message: a larger model cannot be inline
_PREFIX = "~dedup"


@dataclass(frozen=True)
class Merge:
    """`removed` was a copy of `kept` (transposed or not); `nbytes` of it are no longer stored."""

    kept: str
    removed: str
    transposed: bool
    nbytes: int


# packed sub-byte types (4-bit ints and floats) and strings: no element-wise transpose of the bytes
_UNFLIPPABLE = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.STRING,
                getattr(onnx.TensorProto, "FLOAT4E2M1", -1)}


def _data(t: onnx.TensorProto) -> bytes:
    """A tensor's values as little-endian bytes, however the file stores them."""
    return t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()


def _nbytes(t: onnx.TensorProto) -> int:
    """The bytes `t`'s dims and dtype call for (not for packed or string types)."""
    return int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _transposed(data: bytes, t: onnx.TensorProto) -> bytes:
    """The bytes of the 2-D tensor `t` (whose bytes are `data`), transposed: elements moved whole."""
    size = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    rows, cols = t.dims
    return np.ascontiguousarray(np.frombuffer(data, dtype=f"V{size}").reshape(rows, cols).T).tobytes()


def _fingerprint(data: bytes) -> bytes:
    return data if len(data) <= 64 else hashlib.blake2b(data, digest_size=16).digest()


def _readers(graph: onnx.GraphProto, names: set[str], shadowed: frozenset = frozenset(),
             out: dict | None = None) -> dict[str, list[tuple[onnx.GraphProto, int, int]]]:
    """name → (graph, node index, input index) of each read of a name in `names`, subgraphs
    included, except where a subgraph defines the name itself."""
    out = {n: [] for n in names} if out is None else out
    for j, node in enumerate(graph.node):
        for i, name in enumerate(node.input):
            if name in out and name not in shadowed:
                out[name].append((graph, j, i))
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                defined = {t.name for t in sub.initializer} | {v.name for v in sub.input}
                defined |= {o for n in sub.node for o in n.output}
                _readers(sub, names, shadowed | (defined & names), out)
    return out


def _movable(reads: list, ranks: dict[str, int], opset: int) -> bool:
    """Whether every read can take the other orientation without a Transpose of the weight (the
    Reshape → Gemm form of a MatMul whose input is not known to be 2-D needs opset 13)."""
    for graph, j, i in reads:
        node = graph.node[j]
        if node.domain not in ("", "ai.onnx") or sum(1 for n in node.input if n == node.input[i]) > 1:
            return False  # another domain's op of that name, or Gemm(W, W)
        if node.op_type == "Gemm" and i in (0, 1):
            continue
        if node.op_type == "MatMul" and i == 1 and (ranks.get(node.input[0]) == 2 or opset >= 13):
            continue
        if node.op_type == "MatMul" and i == 0 and ranks.get(node.input[1]) == 2:
            continue
        return False
    return True


def plan(model: onnx.ModelProto, ranks: dict[str, int] | None = None) -> dict[str, tuple[str, bool]]:
    """Each initializer to drop → (the one kept, read transposed); see the module docstring.
    `ranks`: `_ranks(model)`, when the caller has it."""
    graph = model.graph
    fixed = {v.name for v in graph.input} | {v.name for v in graph.output}
    inits = [t for t in graph.initializer if t.name not in fixed]
    listed = _manifest_names(model)
    inits.sort(key=lambda t: t.name not in listed)  # stable: file order within each part
    reads = _readers(graph, {t.name for t in inits})
    ranks = _ranks(model) if ranks is None else ranks
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    by_name = {t.name: t for t in inits}  # bytes are read one tensor at a time, never all kept
    kept: dict[tuple, list[str]] = {}  # (dtype, shape, fingerprint) → kept names with those bytes
    shapes = {(t.data_type, tuple(t.dims)) for t in inits}
    alias: dict[str, tuple[str, bool]] = {}

    def group_reads(name: str) -> list:  # the reads the kept `name` serves, untransposed
        return reads[name] + [r for a, (k, t) in alias.items() if k == name and not t for r in reads[a]]

    for t in inits:
        if t.data_type == onnx.TensorProto.STRING:  # no byte form to compare
            continue
        data = _data(t)
        if t.data_type not in _UNFLIPPABLE and len(data) != _nbytes(t):
            continue  # a malformed tensor is left alone (onnxruntime's check then refuses the file)
        key = (t.data_type, tuple(t.dims), _fingerprint(data))
        same = next((k for k in kept.get(key, []) if _data(by_name[k]) == data), None)
        if same is not None:
            alias[t.name] = (same, False)
            continue
        if len(t.dims) == 2 and t.data_type not in _UNFLIPPABLE and (t.data_type, tuple(reversed(t.dims))) in shapes:
            flipped = _transposed(data, t)
            tkey = (t.data_type, tuple(reversed(t.dims)), _fingerprint(flipped))
            other = next((k for k in kept.get(tkey, []) if k != t.name and _data(by_name[k]) == flipped), None)
            if other is not None and _movable(reads[t.name], ranks, opset):
                alias[t.name] = (other, True)
                continue
            if other is not None and _movable(group_reads(other), ranks, opset):  # keep this one instead
                for a, (k, tr) in list(alias.items()):
                    if k == other:
                        alias[a] = (t.name, not tr)
                alias[other] = (t.name, True)
                kept[tkey].remove(other)
        kept.setdefault(key, []).append(t.name)
    return alias


def rewrite(model: onnx.ModelProto, alias: dict[str, tuple[str, bool]],
            ranks: dict[str, int] | None = None) -> list[Merge]:
    """Apply `plan`'s `alias` to `model` in place: readers moved, copies dropped."""
    graph = model.graph
    taken = _names(graph)
    counter = iter(range(1 << 62))
    consts: dict[tuple, str] = {}

    def fresh(hint: str) -> str:
        while True:
            name = f"{_PREFIX}{next(counter)}/{hint}"
            if name not in taken:
                taken.add(name)
                return name

    def const(values: list[int]) -> str:
        if tuple(values) not in consts:
            consts[tuple(values)] = name = fresh("const")
            graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return consts[tuple(values)]

    sizes = {t.name: len(_data(t)) for t in graph.initializer if t.name in alias}
    ranks = _ranks(model) if ranks is None else ranks
    spliced: dict[int, tuple[onnx.GraphProto, dict[int, list]]] = {}  # id(graph) → node index → nodes
    for name, reads in _readers(graph, set(alias)).items():
        target, transposed = alias[name]
        for g, j, i in reads:
            node = g.node[j]
            node.input[i] = target
            if not transposed:
                continue
            if node.op_type == "Gemm":
                attr = "transA" if i == 0 else "transB"
                _set_int(node, attr, 1 - _get_int(node, attr))
            elif i == 0:  # MatMul(Wᵀ, X), X of rank 2: Gemm(W, X, transA=1)
                _to_gemm(node, trans_a=1)
            elif ranks.get(node.input[0]) == 2:
                _to_gemm(node, trans_b=1)
            else:
                spliced.setdefault(id(g), (g, {}))[1][j] = _reshaped_gemm(node, target, fresh, const,
                                                                          _dims(graph, target))
    for g, nodes in spliced.values():  # after every edit that reads nodes by index
        new = [n for j, node in enumerate(g.node) for n in nodes.get(j, [node])]
        del g.node[:]
        g.node.extend(new)
    drop = set(alias)
    kept_inits = [t for t in graph.initializer if t.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return [Merge(k, r, t, sizes[r]) for r, (k, t) in alias.items()]


def _to_gemm(node: onnx.NodeProto, trans_a: int = 0, trans_b: int = 0) -> None:
    node.op_type = "Gemm"
    if trans_a:
        _set_int(node, "transA", 1)
    if trans_b:
        _set_int(node, "transB", 1)


def _reshaped_gemm(node, weight: str, fresh, const, dims: tuple[int, ...]) -> list[onnx.NodeProto]:
    """The nodes for `MatMul(X, Wᵀ)` (W of shape [N, K]): Reshape(X, [-1, K]) → Gemm(transB) →
    Reshape to X's leading dims + [N] (a 1-D X has none, as MatMul treats it)."""
    n, k = dims
    x, out = node.input[0], node.output[0]
    shape, lead, flat, prod, target = (fresh(h) for h in ("shape", "lead", "flat", "gemm", "target"))
    return [
        helper.make_node("Shape", [x], [shape]),
        helper.make_node("Slice", [shape, const([0]), const([-1])], [lead]),
        helper.make_node("Concat", [lead, const([n])], [target], axis=0),
        helper.make_node("Reshape", [x, const([-1, k])], [flat]),
        helper.make_node("Gemm", [flat, weight], [prod], transB=1),
        helper.make_node("Reshape", [prod, target], [out], name=node.name),
    ]


def _get_int(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def _set_int(node: onnx.NodeProto, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def _dims(graph: onnx.GraphProto, name: str) -> tuple[int, ...]:
    return next(tuple(t.dims) for t in graph.initializer if t.name == name)


def _names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
    for node in graph.node:
        names |= set(node.input) | set(node.output)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= _names(sub)
    return names


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of each main-graph value that shape inference (or the file) knows. Inference runs on a
    copy whose large initializers keep their type and dims but not their bytes."""
    light = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions)
    g, src = light.graph, model.graph
    for field in ("node", "input", "output", "value_info"):
        getattr(g, field).extend(getattr(src, field))
    for t in src.initializer:
        if t.ByteSize() <= 4096:  # small ones may be shapes that inference reads
            g.initializer.append(t)
        else:
            g.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # noqa: BLE001 - an unknown rank only limits the forms chosen
        inferred = light
    g = inferred.graph
    out = {t.name: len(t.dims) for t in g.initializer}
    for v in (*g.input, *g.value_info, *g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            out[v.name] = len(v.type.tensor_type.shape.dim)
    return out


def _manifest_names(model: onnx.ModelProto) -> set[str]:
    """Initializer names an existing `tiec.groups` manifest lists (its group heads)."""
    manifest = _manifest(model)
    return {g.get("initializer") for g in manifest.get("share_groups", []) if isinstance(g, dict)} - {None}


def _manifest(model: onnx.ModelProto) -> dict:
    text = next((p.value for p in model.metadata_props if p.key == "tiec.groups"), None)
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {}


def record(model: onnx.ModelProto, merges: list[Merge]) -> None:
    """Add each merged set to the `tiec.groups` manifest (creating it), in its `share_groups` form."""
    manifest = _manifest(model)
    groups = [g for g in manifest.get("share_groups", []) if isinstance(g, dict)]
    next_id = max([g.get("id", 0) for g in groups if isinstance(g.get("id"), int)], default=0) + 1
    sets: dict[str, list[Merge]] = {}
    for m in merges:
        sets.setdefault(m.kept, []).append(m)
    for kept, members in sets.items():
        groups.append({"id": next_id, "initializer": kept, "source": "dedup",
                       "members": [{"param": kept, "transposed": False}]
                       + [{"param": m.removed, "transposed": m.transposed} for m in members]})
        next_id += 1
    manifest = {"model": manifest.get("model", model.graph.name), "share_groups": groups,
                "tie_groups": manifest.get("tie_groups", [])}
    props = {p.key: p.value for p in model.metadata_props}
    props["tiec.groups"] = json.dumps(manifest, separators=(",", ":"))
    del model.metadata_props[:]
    helper.set_model_props(model, props)


def dedup_file(src: str | os.PathLike, dst: str | os.PathLike, *, seed: int = 0,
               dims: dict[str, int] | None = None) -> dict[str, Any]:
    """Read the ONNX file `src`, merge its copies (module docstring), verify, and write `dst`.

    Args:
        seed: for the random inputs of the onnxruntime check.
        dims: a size for each named symbolic input dim (default 2), for graphs that fix them.

    Returns:
        {"merges": [Merge], "bytes_before", "bytes_after", "initializer_bytes_before",
        "initializer_bytes_after", "max_abs_diff"}.

    Raises:
        TieError: `src` is unreadable or too large, the result fails the checker or changes an
            output, or `dst` must not be written; `dst` is then left as it was.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    check_output(dst)
    model, before = _read(src)
    init_before = _initializer_bytes(model)
    ranks = _ranks(model)
    alias = plan(model, ranks)
    merges = rewrite(model, alias, ranks)
    record(model, merges)
    try:
        data = model.SerializeToString(deterministic=True)
        onnx.checker.check_model(data)
    except (ValueError, onnx.checker.ValidationError) as e:
        raise _error(src, f"the merged model is not valid ONNX: {e}") from None
    diff = same_outputs(before, data, seed, lambda why, hint=None: _error(src, why, hint), dims)  # raises unless same
    write_output(dst, data)
    return {"merges": merges, "bytes_before": len(before), "bytes_after": len(data),
            "initializer_bytes_before": init_before, "initializer_bytes_after": _initializer_bytes(model),
            "max_abs_diff": diff}


def _read(path: str) -> tuple[onnx.ModelProto, bytes]:
    """The model at `path` with its external data loaded, and its serialised bytes."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise _error(path, f"it is {size:,} bytes; an ONNX file read inline is at most 2 GiB")
        model = onnx.load(path, load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        data = model.SerializeToString()
    except TieError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreadable or malformed file is the user's to fix
        raise _error(path, f"it is not a readable ONNX file: {type(e).__name__}: {e}") from None
    return model, data


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def _error(path: str, why: str, hint: str | None = None) -> TieError:
    return TieError(f"cannot dedup {path}: {why}", Span(Source(path, ""), 0, 0, 0, 0), hint=hint)

