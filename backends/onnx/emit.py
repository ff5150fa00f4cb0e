"""Export one model of a `ProgramIR` to an ONNX file, straight from the IR (no tracing).

The file holds one initializer per share group or unshared parameter, named after its canonical
parameter, and one per persistent buffer the graph reads (BatchNorm's running statistics, by
their state-dict keys) or computed buffer (RoPE's `inv_freq`, by its module path); every use,
transposed or not, reads that one tensor. Graph inputs keep their IR names and types (symbolic
dims become `dim_param`s, so batch and sequence sizes stay dynamic); graph outputs take `Output.name`. The `tiec.groups` metadata entry records the model's share and tie
groups (ties are a training-time penalty, absent from the graph). Same IR and weights → same
bytes; the file appears atomically or not at all (`tiec.output`), and only once the ONNX checker
accepts it (a rejection is a `TieError` at the IR node responsible: `check.py`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper
from tiec.backends.onnx import inline
from tiec.backends.onnx.builder import ONNX_DTYPES, GraphBuilder, fill_tensor, numpy_dtype, value_info
from tiec.backends.onnx.check import check as check_model
from tiec.backends.onnx.check import check_streamed
from tiec.backends.onnx.ops import ONNX_EMIT
from tiec.backends.onnx.scan import emit_scan
from tiec.compiler import ir as tir
from tiec.compiler.buffers import buffers_of, computed_buffer
from tiec.compiler.ir import DTYPE_BYTES, ProgramIR, TensorType

from tiec.output import write_output

MIN_OPSET = 18
PRODUCER = "tiec"


def export(ir: ProgramIR, model: str, path: str, weights: Mapping[str, np.ndarray], opset: int = 18,
           *, check: bool = True, quantize: str | None = None, external_data: bool | None = None,
           progress: bool = False) -> dict[str, Any]:
    """Write `model` of `ir` to the ONNX file `path`.

    Args:
        ir: a compiled program (shapes inferred, share/tie groups solved).
        model: the model to export.
        path: the .onnx file to write (replaced atomically; see `tiec.output` for links, devices
            and read-only files).
        weights: canonical local parameter name (e.g. "fc1.weight") → array of that parameter's
            declared shape and dtype (never converted). Other keys are ignored.
        opset: the default-domain opset (18 or later).
        check: run `onnx.checker.check_model(full_check=True)` before writing.
        quantize: None, or "int8": each matrix stored once as int8 with a scale per row
            (`quantize.py`).
        external_data: write the initializers to `path + ".data"` beside the model, as they are
            produced (`external.py`); None: only when they pass `external.INLINE_LIMIT` (2 GiB).
        progress: draw a progress bar on standard error once writing takes a few seconds.

    Raises:
        TieError: the checker rejects the model (the error points at the IR node responsible), or
            `path` must not or cannot be written.

    Returns:
        {"model", "path", "nodes", "initializers", "constants", "param_bytes", "bytes", "overhead"}:
        counts of graph nodes, parameter (and buffer) initializers and small constant initializers;
        bytes of unique parameters and the buffers read, of the file, and their difference; with `quantize`, also "quantized"
        (`quantize_int8`'s summary); with external data, "bytes" counts both files, and
        "data_path" and "data_bytes" describe the data file.
    """
    from tiec.backends.onnx import external

    size = external.unique_param_bytes(ir, model) if model in ir.models else 0
    if external_data and quantize is not None:
        raise ValueError("a quantized export is written inline: drop --external-data (or --quantize)")
    if external_data is False and quantize is None and size > external.INLINE_LIMIT:
        raise ValueError(f"the weights are {size:,} bytes, more than one ONNX file holds inline (2 GiB): "
                         "write them as external data (external_data=True, or leave it None)")
    bar = external.Progress(size, progress)
    if external_data or external_data is None and quantize is None and size > external.INLINE_LIMIT:
        return external.write(path, lambda fill: _lower(ir, model, weights, opset, fill), check=check, progress=bar)

    if quantize is None and size > inline.STREAM_FROM:
        return _export_streamed(ir, model, path, weights, opset, check, bar)

    def fill(t, name, arr, dtype):
        fill_tensor(t, name, arr, dtype)
        bar.advance(len(t.raw_data))

    proto, param_bytes, builder = _lower(ir, model, weights, opset, fill)
    bar.close()
    quantized = _quantize(proto, builder, quantize) if quantize is not None else None
    data = proto.SerializeToString(deterministic=True)
    if check:
        check_model(proto, data, builder)
    write_output(path, data)
    n_params = sum(1 for t in proto.graph.initializer if not t.name.startswith("~"))
    n_params -= len(quantized["tensors"]) if quantized is not None else 0  # a quantized tensor's scale
    return {
        "model": model, "path": os.fspath(path), "nodes": len(proto.graph.node),
        "initializers": n_params, "constants": len(proto.graph.initializer) - n_params,
        "param_bytes": param_bytes, "bytes": len(data), "overhead": len(data) - param_bytes,
        **({"quantized": quantized} if quantized is not None else {}),
    }


def _export_streamed(ir: ProgramIR, model: str, path: str, weights: Mapping[str, np.ndarray], opset: int,
                     check: bool, bar) -> dict[str, Any]:
    """`export` of a large inline model: its weights written straight from their arrays (`inline.py`)."""
    pending: list[tuple[str, np.ndarray, str]] = []
    proto, param_bytes, builder = _lower(ir, model, weights, opset, lambda t, name, arr, dtype: pending.append(
        (name, arr, dtype)))
    del proto.graph.initializer[:len(pending)]  # the places `_lower` made for them: they are written apart
    if check:
        check_streamed(proto, tuple((n, ONNX_DTYPES[d], np.shape(a)) for n, a, d in pending), builder)
    written = 0

    def chunks():
        nonlocal written
        for chunk in inline.file_chunks(proto, pending):
            written += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
            yield chunk
            if isinstance(chunk, memoryview):
                bar.advance(chunk.nbytes)

    write_output(path, chunks())
    bar.close()
    n_params = len(pending) + sum(1 for t in proto.graph.initializer if not t.name.startswith("~"))
    return {
        "model": model, "path": os.fspath(path), "nodes": len(proto.graph.node),
        "initializers": n_params, "constants": len(proto.graph.initializer) + len(pending) - n_params,
        "param_bytes": param_bytes, "bytes": written, "overhead": written - param_bytes,
    }


def _quantize(proto: onnx.ModelProto, builder: GraphBuilder, scheme: str) -> dict[str, Any]:
    from tiec.backends.onnx.quantize import SCHEMES, quantize_int8

    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r} (choose from: {', '.join(SCHEMES)})")
    return quantize_int8(proto, builder)


def build(ir: ProgramIR, model: str, weights: Mapping[str, np.ndarray], opset: int = 18) -> tuple[onnx.ModelProto, int]:
    """The ModelProto for `model` and its unique parameter bytes (see `export`)."""
    proto, param_bytes, _ = _lower(ir, model, weights, opset)
    return proto, param_bytes


def _lower(ir: ProgramIR, model: str, weights: Mapping[str, np.ndarray], opset: int,
           fill: Callable = fill_tensor) -> tuple[onnx.ModelProto, int, GraphBuilder]:
    """`build`, and the builder that made the graph (its `origins` lead ONNX nodes back to the IR).
    `fill(tensor, name, array, dtype)` makes each parameter's initializer once the whole graph is
    lowered: inline bytes, or external data written as it goes."""
    if model not in ir.models:
        raise KeyError(f"no model {model!r} in the program (models: {', '.join(ir.models)})")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: tiec emits opset {MIN_OPSET} or later")
    graph = ir.models[model]
    types = ir.types.get(model, {})
    binds = tir.bindings(ir, model)
    arrays, param_bytes = _checked_weights(ir, model, weights, binds)

    b = GraphBuilder(graph, types, binds)
    lower_nodes(b, graph.nodes)

    outputs = []
    for out in graph.outputs:
        b.blame = (f"output '{out.name}'", out.span)
        value = b.value(out.value)
        if value != out.name:
            b.node("Identity", [value], out=out.name)
        t = types.get(out.value)
        outputs.append(_value_info(out.name, t) if t else helper.make_tensor_value_info(
            out.name, ONNX_DTYPES[b.dtype(out.value) or "f32"], None))

    g = helper.make_graph(b.nodes, model, [_value_info(i.name, i.type) for i in graph.inputs], outputs)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(g, opset_imports=opsets, producer_name=PRODUCER,
                              ir_version=helper.find_min_ir_version_for(opsets))
    buffers, buffer_bytes = _checked_buffers(graph, model, weights, _read_names(proto.graph))
    for p, arr in arrays + buffers:  # filled in place: make_graph/make_model would copy every tensor
        fill(proto.graph.initializer.add(), p.name, arr, p.dtype)
    param_bytes += buffer_bytes
    proto.graph.initializer.extend(b.constants)
    groups = json.dumps(manifest(ir, model, binds), separators=(",", ":"))
    helper.set_model_props(proto, {"tiec.groups": groups})
    return proto, param_bytes, b


def lower_nodes(b: GraphBuilder, nodes) -> None:
    """Each node by its `ONNX_EMIT` row; a scan's body into its own graph (`scan.emit_scan`)."""
    for node in nodes:
        if node.op == "scan":
            emit_scan(b, node, lower_nodes)
            continue
        rule = ONNX_EMIT.get(node.op)
        if rule is None:
            raise b.fail(node, "no ONNX lowering for this op")
        b.blame = (f"node '{node.name}' ({node.op})", node.span)
        b.define(node, rule(b, node))


def manifest(ir: ProgramIR, model: str, binds: Mapping[str, tir.Binding] | None = None) -> dict[str, Any]:
    """The `tiec.groups` metadata: the model's share groups (with their initializer) and ties,
    in local names, orientation relative to the group's first member. `binds`: the model's
    `bindings`, when the caller has them already."""
    binds = tir.bindings(ir, model) if binds is None else binds
    shares = []
    for group in ir.share_groups:
        members = [tir.split(m.param)[1] for m in group.members if tir.split(m.param)[0] == model]
        if len(members) < 2:  # a cross-model group with one member here shares nothing in this file
            continue
        shares.append({
            "id": group.id, "initializer": binds[members[0]].canonical,
            "members": [{"param": m, "transposed": binds[m].transposed} for m in members],
        })
    ties = [{
        "id": tie.id, "lambda": tie.strength, "norm": tie.norm,
        "members": [{"param": m.param, "transposed": m.transposed} for m in tie.members],
    } for tie in tir.ties(ir, model)]
    return {"model": model, "share_groups": shares, "tie_groups": ties}


def _checked_weights(ir: ProgramIR, model: str, weights: Mapping[str, np.ndarray],
                     binds: Mapping[str, tir.Binding]) -> tuple[list, int]:
    """(Param, array) per canonical parameter, in declaration order, checked; and their bytes."""
    out, total = [], 0
    for p in (p for p in ir.models[model].params if binds[p.name].canonical == p.name):
        out.append((p, _checked(p, model, weights, "parameter")))
        total += DTYPE_BYTES[p.dtype] * int(np.prod(p.shape, dtype=np.int64))
    return out, total


def _checked(p: tir.Param | tir.Buffer, model: str, weights: Mapping[str, np.ndarray], what: str) -> np.ndarray:
    """`weights[p.name]`, of `p`'s declared shape and dtype exactly."""
    if p.name not in weights:
        raise KeyError(f"no weight for {what} {p.name!r} of model {model!r} "
                       f"(pass one array per canonical parameter and per buffer)")
    arr = np.asarray(weights[p.name])
    if tuple(arr.shape) != tuple(p.shape):
        raise ValueError(f"weight {p.name!r} has shape {tuple(arr.shape)}, but the {what} is declared "
                         f"{TensorType(p.dtype, tuple(p.shape))}")
    if arr.dtype != numpy_dtype(p.dtype):  # never cast: the file would not hold the values given
        raise ValueError(f"weight {p.name!r} has dtype {arr.dtype}, but the {what} is {p.dtype}: "
                         f"convert it to {numpy_dtype(p.dtype)} first if that is what you mean")
    return arr


def _checked_buffers(graph: tir.Graph, model: str, weights: Mapping[str, np.ndarray],
                     read: set[str]) -> tuple[list, int]:
    """(Buffer, array) per persistent buffer the graph reads (BatchNorm's running statistics; an
    eval-mode graph never reads `num_batches_tracked`), checked as parameters are; and their bytes.
    A missing one is an error, never its initial value. A buffer with a rule (RoPE's `inv_freq`) is
    computed from its layer's configuration and never looked up in `weights`."""
    out = [(buf, computed_buffer(buf, graph.layer(buf.layer)) if buf.rule else _checked(buf, model, weights, "buffer"))
           for buf in buffers_of(graph.layers) if (buf.persistent or buf.rule) and buf.name in read]
    return out, sum(DTYPE_BYTES[buf.dtype] * int(np.prod(buf.shape, dtype=np.int64)) for buf, _ in out)


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node of `graph` (or of a subgraph it holds) takes as input."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                names |= _read_names(sub)
    return names


_value_info = value_info
