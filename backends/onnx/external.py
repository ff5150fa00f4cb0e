"""External data: an ONNX model plus one data file beside it, the tensors written as they are made.

Rules:
- `tiec export --external-data`, and every export whose unique parameters pass `INLINE_LIMIT`
  (protobuf cannot hold a message of 2 GiB or more), writes `OUT` and `OUT.data` beside it (a
  symlink's target); the model's initializers name that file by its bare name, with an offset and
  a length. Both appear together or not at all (`tiec.output.written_together`).
- Each initializer's bytes go to the data file when the lowering reaches it, straight from the
  weight's memory (a dtype conversion, if any, is the only copy, one tensor at a time), so the
  export never holds the model twice. Tensors of 1 MiB or more start at a multiple of 64 KiB, as
  onnx's own writer aligns them, so a runtime can map them.
- The ONNX checker (full check) runs on the written model's path before anything is moved into
  place; a rejection is located as for an inline export (`check.py`).
- Same IR and weights → same bytes, in both files.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import onnx
from tiec.backends.onnx.builder import ONNX_DTYPES, numpy_dtype
from tiec.backends.onnx.check import ERRORS, rejection
from tiec.compiler import ir as tir
from tiec.compiler.ir import DTYPE_BYTES, ProgramIR

from tiec.output import written_together

INLINE_LIMIT = 2**31 - 2**26  # 2 GiB, less 64 MiB for the graph and its constants
ALIGN, ALIGN_FROM = 65536, 2**20


def data_name(path: str | os.PathLike) -> str:
    """The data file's name, beside the model: `model.onnx` → `model.onnx.data`."""
    return os.path.basename(os.fspath(path)) + ".data"


def unique_param_bytes(ir: ProgramIR, model: str) -> int:
    """Bytes of `model`'s canonical parameters in their declared dtypes (what the initializers hold)."""
    binds = tir.bindings(ir, model)
    return sum(DTYPE_BYTES[p.dtype] * int(np.prod(p.shape, dtype=np.int64))
               for p in ir.models[model].params if binds[p.name].canonical == p.name)


class Progress:
    """A one-line bar on `stream` for the bytes written, drawn only once writing has taken `after`
    seconds (a quick export prints nothing) and only when `enabled`."""

    def __init__(self, total: int, enabled: bool, stream: IO[str] | None = None, after: float = 2.0):
        self.total, self.enabled, self.stream, self.after = max(total, 1), enabled, stream or sys.stderr, after
        self.done, self.start, self.drawn, self.last = 0, time.monotonic(), False, 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or now - self.start < self.after or (now - self.last < 0.1 and self.done < self.total):
            return
        frac = min(self.done / self.total, 1.0)
        self.stream.write(f"\rtiec: writing weights [{'#' * int(30 * frac):<30}] {frac:4.0%} "
                          f"{self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB")
        self.stream.flush()
        self.drawn, self.last = True, now

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


class TensorWriter:
    """The `fill` of the lowering: appends each tensor's bytes to the open data file `f` and makes
    its initializer refer to them."""

    def __init__(self, f: IO[bytes], location: str, progress: Progress):
        self.f, self.location, self.progress = f, location, progress
        self.offset = 0

    def __call__(self, t: onnx.TensorProto, name: str, array: np.ndarray, dtype: str) -> onnx.TensorProto:
        arr = np.asarray(array).astype(numpy_dtype(dtype), order="C", copy=False)
        if arr.dtype.byteorder == ">":
            arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
        arr = np.ascontiguousarray(arr)
        t.name, t.data_type = name, ONNX_DTYPES[dtype]
        t.dims.extend(arr.shape)
        if arr.nbytes >= ALIGN_FROM and self.offset % ALIGN:
            pad = ALIGN - self.offset % ALIGN
            self.f.write(bytes(pad))
            self.offset += pad
        self.f.write(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(arr.nbytes))):
            t.external_data.add(key=key, value=value)
        self.offset += arr.nbytes
        self.progress.advance(arr.nbytes)
        return t


def write(path: str | os.PathLike, lower: Callable[[Callable], tuple], *, check: bool,
          progress: Progress) -> dict[str, Any]:
    """Write the model that `lower(fill)` builds (returning `(proto, param_bytes, builder)`) to
    `path` and its data file, by the module docstring's rules.

    Returns:
        the fields of `emit.export`'s report ("bytes": both files), with "data_path" and "data_bytes".
    """
    path = os.fspath(path)
    name = data_name(path)
    with written_together(path, (name,)) as (model_tmp, (data_tmp,)):
        with open(data_tmp, "wb") as f:
            proto, param_bytes, builder = lower(TensorWriter(f, name, progress))
        progress.close()
        data = proto.SerializeToString(deterministic=True)
        with open(model_tmp, "wb") as f:
            f.write(data)
        if check:
            try:
                onnx.checker.check_model(model_tmp, full_check=True)
            except ERRORS as e:
                raise rejection(proto, builder, e) from e
        data_bytes = os.path.getsize(data_tmp)
    n_params = sum(1 for t in proto.graph.initializer if not t.name.startswith("~"))
    total = len(data) + data_bytes
    return {
        "model": proto.graph.name, "path": path, "nodes": len(proto.graph.node), "initializers": n_params,
        "constants": len(proto.graph.initializer) - n_params, "param_bytes": param_bytes, "bytes": total,
        "overhead": total - param_bytes,
        "data_path": os.path.join(os.path.dirname(os.path.realpath(path) if os.path.islink(path) else path), name),
        "data_bytes": data_bytes,
    }
