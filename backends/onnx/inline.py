"""Writing an inline ONNX file with its weights streamed from their arrays, never copied whole.

`ModelProto.SerializeToString` builds the whole file in memory (a copy of every weight) before a
byte reaches the disk; for a model of hundreds of MiB that copy, not the disk, is what an export
costs. Protobuf merges a message field that occurs more than once, appending its repeated fields
(the wire-format rule every parser follows: `onnx.load`, onnxruntime). So the file is the graph
without its weights, serialised as usual, followed by one `graph { initializer { … } }` field
per weight, whose bytes are written straight from the array. Parsed, it is the same model, in the
same initializer order, as the one-piece serialisation (tests/test_onnx_inline.py compares them);
same IR and weights give the same bytes.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from tiec.backends.onnx.builder import ONNX_DTYPES, numpy_dtype

STREAM_FROM = 8 * 2**20  # weights' bytes from which an inline export streams them
_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9  # ModelProto.graph, GraphProto.initializer, TensorProto.raw_data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_prefix(field: int, length: int) -> bytes:
    return _varint(field << 3 | 2) + _varint(length)


def tensor_chunks(name: str, array: np.ndarray, dtype: str) -> list[bytes | memoryview]:
    """The bytes of one `graph { initializer { name, dims, data_type, raw_data } }` field, the
    array's own memory (little-endian, contiguous) as the last piece."""
    arr = np.asarray(array).astype(numpy_dtype(dtype), order="C", copy=False)
    if arr.dtype.byteorder == ">":
        arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
    raw = memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B")
    header = onnx.TensorProto(name=name, data_type=ONNX_DTYPES[dtype], dims=list(arr.shape)).SerializeToString()
    tensor = header + _length_prefix(_RAW_DATA, raw.nbytes)
    initializer = _length_prefix(_INITIALIZER, len(tensor) + raw.nbytes)
    return [_length_prefix(_GRAPH, len(initializer) + len(tensor) + raw.nbytes) + initializer + tensor, raw]


def file_chunks(proto: onnx.ModelProto, tensors: list[tuple[str, np.ndarray, str]]) -> Iterator[bytes | memoryview]:
    """The whole file: `proto` (the model without `tensors`), then each tensor as an initializer."""
    yield proto.SerializeToString(deterministic=True)
    for name, array, dtype in tensors:
        yield from tensor_chunks(name, array, dtype)
