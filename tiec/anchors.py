"""Anchors: the fixed tensors `tie(λ) w, anchor("key")` pulls parameters toward, read from a checkpoint.

Rule: every anchor of the module's ties names one entry of the checkpoint (`anchor()`: the first
member's own state-dict key). Each entry must be there, a dense tensor of the parameter's dtype
(nothing is cast: an f16 checkpoint for an f32 parameter is an error, converted by the user if
meant) and of the first member's shape; every failure is reported at the `anchor(…)` that asked
for it. Keys are only looked up, never written into generated code. The module's
`load_anchors(state)` then copies them into its non-persistent buffers.
"""
from __future__ import annotations

import os
import reprlib
from collections.abc import Mapping
from typing import Any

from tiec.compiler import ir
from tiec.dsl.diagnostics import TieError

TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}


def read_checkpoint(path: str | os.PathLike, where) -> Mapping[str, Any]:
    """The tensors of a safetensors file (read lazily) or of a `torch.save` state dict (`tiec.weights.read`)."""
    from tiec import weights

    state = weights.read(path, where)
    if not isinstance(state, Mapping):
        raise TieError(f"{os.fspath(path)} does not hold a state dict: got {type(state).__name__}", where,
                       hint="save a mapping of names to tensors: torch.save(module.state_dict(), path)")
    return state


def anchor_groups(program: ir.ProgramIR, model: str | None) -> tuple[ir.TieGroup, ...]:
    """The tie groups of `model`'s module (every model's when None) that have anchors."""
    return tuple(t for t in ir.ties(program, model) if t.anchors)


def checked_anchors(program: ir.ProgramIR, model: str | None, state: Mapping[str, Any]) -> dict[str, Any]:
    """Checkpoint key → tensor for every anchor of the module, each checked (see the module docstring).

    Raises:
        TieError: at the first `anchor(…)` whose entry is missing, not a dense tensor, or of the wrong
            dtype or shape; every such anchor is reported.
    """
    import torch

    params: dict[str, ir.Param] = {}
    for name in ([model] if model is not None else program.models):
        for p in ir.declared_params(program, name):
            params[p.name if model is not None else ir.qualify(name, p.name)] = p
    out, errors = {}, []
    for tie in anchor_groups(program, model):
        param = params[tie.members[0].param]
        for a in tie.anchors:
            if a.key in out:
                continue
            value = state.get(a.key)
            problem = None
            if value is None:
                close = [k for k in state if isinstance(k, str) and k.endswith(a.key.rsplit(".", 1)[-1])][:3]
                errors.append(TieError(f"the anchor checkpoint has no entry {a.key!r}", a.span,
                                       hint=f"entries like it: {', '.join(map(repr, close))}" if close else None))
                continue
            if not isinstance(value, torch.Tensor):
                problem = f"is not a tensor: got {type(value).__name__} {reprlib.repr(value)}"
            elif value.is_meta or value.layout != torch.strided or value.is_quantized or value.is_nested:
                problem = "is not a dense tensor with values"
            elif str(value.dtype).removeprefix("torch.") != TORCH_DTYPES.get(param.dtype):
                problem = f"has dtype {str(value.dtype).removeprefix('torch.')}, but '{tie.members[0].param}' is " \
                          f"{param.dtype}"
            elif tuple(value.shape) != tuple(param.shape):
                problem = f"has shape {list(value.shape)}, but '{tie.members[0].param}' has {list(param.shape)}"
            if problem:
                errors.append(TieError(f"anchor {a.key!r} {problem}", a.span,
                                       hint="nothing is cast or reshaped: convert the checkpoint if these are the "
                                            "values you mean" if "dtype" in problem else None))
                continue
            out[a.key] = value
    if errors:
        from tiec.dsl.diagnostics import raise_all

        raise_all(errors)
    return out


def load_anchors(program: ir.ProgramIR, module, model: str | None, source: str | os.PathLike | Mapping) -> None:
    """Check the anchors `source` (a checkpoint path, or a state dict) holds, then load them into `module`."""
    if model is None and len(program.models) == 1:  # one model's module is that model's own
        model = next(iter(program.models))
    where = next((a.span for t in anchor_groups(program, model) for a in t.anchors), None)
    if where is None:
        first = next(iter(program.structure.values()), None)
        raise TieError("this module has no anchors to load", first.span if first else None,
                       hint='tie a parameter to a checkpoint tensor: tie(0.01) fc.weight, anchor("fc.weight")')
    state = source if isinstance(source, Mapping) else read_checkpoint(source, where)
    module.load_anchors(checked_anchors(program, model, state))
