"""`int8`: weight-only int8 quantization of a built model, one quantized tensor per share group.

Every float parameter initializer of rank ≥ 2 (Linear, Embedding, Conv and attention matrices)
becomes an INT8 tensor and a FLOAT scale per row (its dim 0: an output channel, or one
embedding row), symmetric (zero point 0): `q = round(w / s)`, `s = max|w_row| / 127` (1 for an
all-zero row), so `|w - q·s| ≤ s / 2`. One `DequantizeLinear(q, s, axis=0)` at the top of the
graph gives back the float tensor under the parameter's own name, so every use of the group —
Gather, Gemm with transA/transB, MatMul, Conv — reads that one tensor, as in the float file. Biases
and norm weights (rank 1) stay float. Compute stays float: the file shrinks about 4×, accuracy is
that of the rounded weights, and onnxruntime dequantizes each weight once per run.

onnxruntime's `quantize_dynamic` is not used: it quantizes MatMul and Gather consumers one by one
(MatMulInteger needs the weight as [K, N], so a transposed use would need a second, transposed
int8 tensor), and it leaves Gemm, which tiec's Linear layers are, in float.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tiec.dsl.diagnostics import TieError

from .builder import GraphBuilder

SCHEMES = ("int8",)
INT8_MAX = 127
_OTHER_FLOATS = {onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.DOUBLE: "f64"}
_QUANTIZED = ":int8"  # suffixes of the new tensors' names: never in an IR value or a state-dict key
_SCALE = ":scale"


def quantize_int8(proto: onnx.ModelProto, builder: GraphBuilder) -> dict[str, Any]:
    """Quantize `proto`'s parameter initializers in place (see the module docstring); `builder`'s
    node origins shift with the inserted nodes, so a checker error still points at the spec.

    Raises:
        TieError: a weight to quantize holds nan or inf (it has no int8 form), or is not f32
            (DequantizeLinear gives float32 before opset 19).

    Returns:
        {"scheme", "tensors", "int8_bytes", "scale_bytes", "float_bytes_kept", "max_abs_error"}:
        the quantized initializers, their bytes, the bytes left in float, and the largest
        |w − dequantized w| over all of them.
    """
    graph = proto.graph
    kept, new_inits, nodes, origins = [], [], [], []
    summary = {"scheme": "int8 weight-only, symmetric, per row", "tensors": [], "int8_bytes": 0, "scale_bytes": 0,
               "float_bytes_kept": 0, "max_abs_error": 0.0}
    spans = {p.name: p.span for p in builder.graph.params}
    for t in graph.initializer:
        if not t.name.startswith("~") and t.data_type in _OTHER_FLOATS and len(t.dims) >= 2:
            raise TieError(f"--quantize int8 takes f32 weights: '{t.name}' is {_OTHER_FLOATS[t.data_type]}",
                           spans.get(t.name, builder.graph.span), hint="compile with --dtype f32 (load(dtype='f32'))")
        if t.name.startswith("~") or t.data_type != onnx.TensorProto.FLOAT or len(t.dims) < 2:
            kept.append(t)
            if not t.name.startswith("~"):
                summary["float_bytes_kept"] += len(t.raw_data)
            continue
        w = numpy_helper.to_array(t)
        if not np.isfinite(w).all():
            raise TieError(f"cannot quantize weight '{t.name}': it holds non-finite values (nan or inf)",
                           spans.get(t.name, builder.graph.span), hint="export it without --quantize")
        q, scale = _int8_rows(w)
        summary["max_abs_error"] = max(summary["max_abs_error"],
                                       float(np.abs(q.astype(np.float32) * _column(scale, w.ndim) - w).max()))
        new_inits += [numpy_helper.from_array(q, t.name + _QUANTIZED), numpy_helper.from_array(scale, t.name + _SCALE)]
        nodes.append(helper.make_node("DequantizeLinear", [t.name + _QUANTIZED, t.name + _SCALE], [t.name], axis=0))
        origins.append((f"parameter '{t.name}'", spans.get(t.name, builder.graph.span)))
        summary["tensors"].append(t.name)
        summary["int8_bytes"] += q.nbytes
        summary["scale_bytes"] += scale.nbytes
    del graph.initializer[:]
    graph.initializer.extend(new_inits + kept)
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    builder.origins[:0] = origins
    helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                   "tiec.quantization": json.dumps({"scheme": "int8", "axis": 0, "symmetric": True,
                                                                    "tensors": summary["tensors"]},
                                                                   separators=(",", ":"))})
    return summary


def _int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scale per row) with w ≈ q · scale[row]."""
    peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / _column(scale, w.ndim)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def _column(scale: np.ndarray, ndim: int) -> np.ndarray:
    return scale.reshape((-1,) + (1,) * (ndim - 1))
