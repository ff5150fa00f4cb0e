"""ONNX backend: `export(ir, model, path, weights)` writes one model as an opset-18 ONNX file.

`onnx.helper` and protobuf stay inside this package; callers pass a `ProgramIR` and numpy arrays.
"""
from __future__ import annotations

from tiec.backends.onnx.emit import build, export, manifest

__all__ = ["build", "export", "manifest"]
