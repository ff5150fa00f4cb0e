"""PyTorch backend: `generate_source` emits a readable `nn.Module` per model; `build_module`
compiles that same source into a live module. Tables: `TORCH_EMIT` (ops), `TORCH_LAYER` (layers).

Emitting source needs no torch: `build_module` imports it only when called."""
from __future__ import annotations

from .codegen import generate_source
from .emit_table import TORCH_EMIT, TORCH_LAYER


def build_module(ir, model=None, seed=0, device=None):
    """See `module.build_module`."""
    from .module import build_module as build

    return build(ir, model, seed, device)


def materialize(module, device="cpu", seed=0):
    """See `retie.materialize`."""
    from .retie import materialize as run

    return run(module, device, seed)


__all__ = ["TORCH_EMIT", "TORCH_LAYER", "build_module", "generate_source", "materialize"]
