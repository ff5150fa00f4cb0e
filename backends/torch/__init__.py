"""PyTorch backend: `generate_source` emits a readable `nn.Module` per model; `build_module`
compiles that same source into a live module. Tables: `TORCH_EMIT` (ops), `TORCH_LAYER` (layers)."""
from __future__ import annotations

from .codegen import generate_source
from .emit_table import TORCH_EMIT, TORCH_LAYER
from .module import build_module

__all__ = ["TORCH_EMIT", "TORCH_LAYER", "build_module", "generate_source"]
