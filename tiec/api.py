"""The Python API: `tiec.load(path)` → `Program`, with its PyTorch, Python-source and ONNX outputs.

A `Program` is a compiled .tie file. `torch()` builds an `nn.Module` (one model, or every model as
a submodule named after it); `python()` returns the standalone source of that same module;
`onnx()` exports one model with the user's weights; `stats()` counts parameters.
"""
from __future__ import annotations

import codecs
import os
import reprlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tiec.compiler import compile_source, ir
from tiec.compiler.stats import program_stats
from tiec.dsl.diagnostics import Source, Span, TieError

if TYPE_CHECKING:
    import numpy as np


class Program:
    """A compiled .tie program."""

    def __init__(self, program: ir.ProgramIR, path: str):
        self.ir = program
        self.path = path

    @property
    def models(self) -> tuple[str, ...]:
        """Model names, in source order."""
        return tuple(self.ir.models)

    @property
    def warnings(self):
        return self.ir.warnings

    def _model(self, model: str | None, required: bool = False) -> str | None:
        if model is None:
            if required and len(self.models) != 1:
                raise TieError(f"{self.path} defines {len(self.models)} models; choose one: {', '.join(self.models)}",
                               self.ir.models[self.models[0]].span, hint="pass model=… (CLI: --model)")
            return self.models[0] if required else None
        if model not in self.ir.models:
            from tiec.dsl.diagnostics import did_you_mean

            raise TieError(f"no model named '{model}' in {self.path}", self.ir.models[self.models[0]].span,
                           hint=did_you_mean(model, self.models) or f"models: {', '.join(self.models)}")
        return model

    def stats(self) -> dict:
        """Parameter statistics for each model and the program (see `tiec stats --json`)."""
        return program_stats(self.ir)

    def torch(self, model: str | None = None, seed: int = 0):
        """An `nn.Module` for `model`, or (None) one holding every model as a submodule."""
        from tiec.backends.torch import build_module

        return build_module(self.ir, self._model(model), seed)

    def python(self, model: str | None = None) -> str:
        """Standalone PyTorch source of the module `torch(model)` builds."""
        from tiec.backends.torch import generate_source

        return generate_source(self.ir, self._model(model))

    def onnx(self, path: str | os.PathLike, model: str | None = None, weights: Any = None, opset: int = 18,
             seed: int = 0) -> dict:
        """Export `model` to ONNX at `path`. `weights`: a module from `torch()` (one model or all),
        a state dict, or a file saved with `torch.save`; None means fresh weights from `seed`."""
        from tiec.backends.onnx import export

        name = self._model(model, required=True)
        arrays = self.weights_for(name, weights, seed)
        return export(self.ir, name, str(path), arrays, opset=opset)

    def weights_for(self, model: str, weights: Any, seed: int = 0) -> dict:
        """The arrays of `model`'s canonical parameters, from `weights` (see `onnx`)."""
        import torch

        if weights is None:
            weights = self.torch(model, seed)
        origin = None
        if isinstance(weights, (str, os.PathLike)):
            origin = os.fspath(weights)
            try:
                weights = torch.load(origin, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
                raise TieError(f"cannot read weights from {origin}: {e}", self.ir.models[model].span) from None
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        if not isinstance(state, Mapping):
            if origin is None:
                raise TieError(f"weights must be a module, a state dict or a saved state dict file: got {_got(state)}",
                               self.ir.models[model].span)
            raise TieError(f"{origin} does not hold a state dict: got {_got(state)}", self.ir.models[model].span,
                           hint="save a mapping of parameter names to tensors: torch.save(module.state_dict(), path)")
        return _canonical_arrays(self.ir, model, state)


def _canonical_arrays(program: ir.ProgramIR, model: str, state: Mapping) -> dict:
    import numpy as np

    graph = program.models[model]
    params = graph.param_map()
    local = ir.bindings(program, model)
    everywhere = ir.bindings(program)
    out, missing = {}, []
    for canon in sorted({b.canonical for b in local.values()}):
        qualified = ir.qualify(model, canon)
        key, transposed = next((k for k in (canon, qualified) if k in state), None), False
        if key is None:  # in the all-models module it may be another model's tensor, transposed
            b = everywhere[qualified]
            key, transposed = (b.canonical, b.transposed) if b.canonical in state else (None, False)
        if key is None:
            missing.append(canon)
            continue
        arr = _array(key, state[key], params[canon])
        if transposed:
            arr = np.ascontiguousarray(arr.T)
        if tuple(arr.shape) != params[canon].shape:
            raise TieError(f"weight '{canon}' has shape {list(arr.shape)}, the model needs {list(params[canon].shape)}",
                           params[canon].span)
        out[canon] = arr
    if missing:
        foreign = [everywhere[ir.qualify(model, m)] for m in missing]
        foreign = [f"{b.canonical}{'.T' if b.transposed else ''}" for b in foreign
                   if ir.split(b.canonical)[0] != model]
        hint = (f"its tensor lives in another model ({foreign[0]}): pass the module holding every model, "
                "program.torch()") if foreign else "pass the module from program.torch(), or its state_dict()"
        raise TieError(f"the weights lack {len(missing)} parameter(s) of {model}: {', '.join(missing[:5])}",
                       graph.span, hint=hint)
    return out


_PARAM_KINDS = {"f16": "float", "bf16": "float", "f32": "float", "f64": "float", "i32": "integer",
                "i64": "integer", "bool": "bool"}
_CAST_HINTS = {  # for a float parameter
    "complex": "converting it would drop the imaginary part; pass the real values you mean",
    "bool": "convert it explicitly (tensor.float()) if these are the values you mean",
    "integer": "convert it explicitly (tensor.float()) if these are the values you mean",
}


def _array(key: Any, value: Any, param: ir.Param) -> np.ndarray:
    """`value` (the state dict's entry `key` for `param`) as a dense numpy array, checked: never
    cast across kinds (an integer, bool or complex tensor is no float weight), never read a tensor
    with no values (meta) or another layout (sparse, quantized, nested). nan and inf pass: a
    trained model may hold them, and the exported file should hold what was trained."""
    import numpy as np
    import torch

    where = param.span
    if isinstance(value, torch.Tensor):
        unreadable = _unreadable(value)
        if unreadable:
            raise TieError(f"weight '{key}' is {unreadable[0]}", where, hint=unreadable[1])
        kind = ("float" if value.is_floating_point() else "complex" if value.is_complex()
                else "bool" if value.dtype == torch.bool else "integer")
        dtype = str(value.dtype).removeprefix("torch.")
    elif isinstance(value, np.ndarray):
        kind = {"f": "float", "c": "complex", "b": "bool", "i": "integer", "u": "integer"}.get(value.dtype.kind, "other")
        dtype = str(value.dtype)
    else:
        raise TieError(f"weight '{key}' is not a tensor: got {_got(value)}", where,
                       hint="a state dict maps each parameter name to a torch.Tensor")
    if kind != _PARAM_KINDS[param.dtype]:
        raise TieError(f"weight '{key}' has dtype {dtype}, but the parameter is {param.dtype}", where,
                       hint=_CAST_HINTS.get(kind) if _PARAM_KINDS[param.dtype] == "float" else None)
    if isinstance(value, np.ndarray):
        return value
    value = value.detach().cpu()
    return (value.float() if kind == "float" else value).contiguous().numpy()  # numpy has no bfloat16


def _got(value: Any) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _unreadable(tensor: Any) -> tuple[str, str | None] | None:
    """What keeps `tensor`'s values from being read as a dense array, and the fix, if anything."""
    import torch

    if tensor.is_meta:
        return "a meta tensor, which has a shape but no values", "save the weights after loading or initialising them"
    if tensor.layout != torch.strided:
        return f"a sparse tensor ({tensor.layout})", "pass it dense: tensor.to_dense()"
    if tensor.is_quantized:
        return f"a quantized tensor ({tensor.dtype})", "pass it dequantized: tensor.dequantize()"
    if tensor.is_nested:
        return "a nested tensor", "pass one dense tensor of the parameter's shape"
    return None


def loads(text: str, overrides: Mapping[str, int | float] | None = None, filename: str = "<string>") -> Program:
    """Compile .tie source text."""
    return Program(compile_source(text, filename, overrides), filename)


def load(path: str | os.PathLike, overrides: Mapping[str, int | float] | None = None) -> Program:
    """Compile the .tie file at `path` (at most `MAX_SOURCE_BYTES`, UTF-8)."""
    return Program(compile_source(_read_source(str(path)), str(path), overrides), str(path))


MAX_SOURCE_BYTES = 16 * 2**20  # far beyond any real spec; /dev/zero or a misnamed dataset stops here


def _read_source(path: str) -> str:
    nowhere = Span(Source(path, ""), 0, 0, 0, 0)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)  # never the whole of an endless or huge file
    except OSError as e:
        raise TieError(f"cannot read {path}: {e.strerror or e}", nowhere) from None
    if len(data) > MAX_SOURCE_BYTES:
        raise TieError(f"cannot read {path}: it is larger than {MAX_SOURCE_BYTES // 2**20} MiB, "
                       "the limit for a .tie file", nowhere)
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # not part of the spec
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data[bom:], e.start, bom) from None


def _not_utf8(path: str, body: bytes, start: int, offset: int) -> TieError:
    """The error for the bad byte at `body[start]`, at the line and column the lexer would count."""
    before = body[:start].decode("utf-8")  # valid: the decoder stopped at the first bad byte
    line = before.count("\n") + 1
    col = len(before) - (before.rfind("\n") + 1) + 1
    src = Source(path, body.decode("utf-8", errors="replace"))  # the excerpt shows the byte as U+FFFD
    return TieError(f"the file is not UTF-8 text (byte {start + offset} is {body[start]:#04x})",
                    Span(src, line, col, line, col + 1), hint="save it as UTF-8")
