"""Buffers: the tensors a layer keeps beside its parameters (BatchNorm's running statistics).

Rule: a layer's buffers follow from its kind and configuration alone (`catalog.LayerSpec.buffers`),
so they are derived from the IR's layers rather than stored beside them: one `ir.Buffer` per slot,
named `<layer path>.<slot>` as PyTorch's state dict names it. A buffer slot whose dtype is "" takes
the layer's parameter dtype (a BatchNorm in f16 keeps f16 statistics, as `nn.BatchNorm2d(dtype=)`
does); `num_batches_tracked` is always i64. Buffers are never shared or tied, and parameter counts
leave them out.

A buffer slot with a `rule` is computed from the layer's configuration when the module is built
(RoPE's `inv_freq`): non-persistent, as PyTorch's `register_buffer(..., persistent=False)`, so it is
in no state dict and no checkpoint is asked for it; the ONNX export writes the values
`computed_buffer` gives as an initializer.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from . import ir
from .catalog import LAYERS


def layer_buffers(layer: ir.Layer) -> tuple[ir.Buffer, ...]:
    """The buffers of one layer instance, in its kind's order.

    Args:
        layer: a layer of a flat graph or a subgraph's instance (its `path` names the buffers).

    Returns:
        One `ir.Buffer` per buffer slot of the layer's kind at its configuration."""
    dtype = layer.config.get("dtype") or "f32"
    return tuple(ir.Buffer(f"{layer.path}.{b.name}", layer.path, b.name, tuple(b.shape), b.dtype or dtype,
                           b.persistent, b.init, layer.span, b.rule)
                 for b in LAYERS[layer.kind].buffers(layer.config))


def buffers_of(layers: Iterable[ir.Layer]) -> tuple[ir.Buffer, ...]:
    """Every buffer of `layers`, in layer order."""
    return tuple(b for layer in layers for b in layer_buffers(layer))


def declared_buffers(program: ir.ProgramIR, model: str, persistent_only: bool = True) -> tuple[ir.Buffer, ...]:
    """A model's buffers (only those in the state dict, unless `persistent_only` is False), without
    lowering its graph."""
    return tuple(b for b in buffers_of(ir.declared_layers(program, model)) if b.persistent or not persistent_only)


def buffer_slots(kind: str, config) -> list[str]:
    """The buffer slot names of a layer kind at `config`: for messages that tell a buffer from a
    parameter."""
    return [b.name for b in LAYERS[kind].buffers(config)]


def _rotary_inv_freq(config: Mapping[str, Any]) -> np.ndarray:
    """1 / θ^(2i / head_dim) for i < head_dim / 2, in f32: HF's `LlamaRotaryEmbedding` expression,
    evaluated by torch so the ONNX initializer holds the very values the PyTorch module computes."""
    import torch

    d, theta = config["head_dim"], config["theta"]
    return (1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float) / d))).numpy()


# Rule name (`catalog.BufferSlot.rule`) → the buffer's values from its layer's configuration.
BUFFER_RULES: dict[str, Callable[[Mapping[str, Any]], np.ndarray]] = {
    "rotary_inv_freq": _rotary_inv_freq,
}


def computed_buffer(buffer: ir.Buffer, layer: ir.Layer) -> np.ndarray:
    """The values of a buffer with a rule, of its declared shape and dtype; `layer` is its layer."""
    arr = np.asarray(BUFFER_RULES[buffer.rule](layer.config))
    if arr.shape != buffer.shape or arr.dtype != np.dtype(buffer.dtype.replace("f", "float")):
        raise AssertionError(f"buffer rule {buffer.rule!r} gave {arr.dtype}{list(arr.shape)} for {buffer.name}")
    return arr
