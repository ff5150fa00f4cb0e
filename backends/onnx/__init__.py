"""ONNX backend: `export(ir, model, path, weights)` writes one model as an opset-18 ONNX file.

`onnx.helper` and protobuf stay inside this package; callers pass a `ProgramIR` and numpy arrays.
"""
from __future__ import annotations

from tiec.backends.onnx.emit import build, export, manifest
from tiec.backends.onnx.ops import ONNX_EMIT
from tiec.compiler.catalog import check_table

check_table("ONNX_EMIT", ONNX_EMIT)  # one row per op and layer kind of the registry

__all__ = ["build", "export", "manifest"]
