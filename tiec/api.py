"""The Python API: `tiec.load(path)` → `Program`, with its PyTorch, Python-source and ONNX outputs.

A `Program` is a compiled .tie file. `torch()` builds an `nn.Module` (one model, or every model as
a submodule named after it); `python()` returns the standalone source of that same module;
`onnx()` exports one model with the user's weights; `save()` and `load_weights()` write and read
checkpoints that keep share groups (`tiec.weights`); `stats()` counts parameters.
"""
from __future__ import annotations

import codecs
import os
import reprlib
from collections.abc import Mapping
from typing import Any

from tiec.compiler import compile_source, ir
from tiec.compiler.stats import program_stats
from tiec.dsl.diagnostics import Source, Span, TieError


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

    def torch(self, model: str | None = None, seed: int = 0, anchors: Any = None, device: Any = None):
        """An `nn.Module` for `model`, or (None) one holding every model as a submodule. `anchors`: the
        checkpoint (a path, or a state dict) holding the tensors its `anchor(…)` ties name (`tiec.anchors`).
        `device`: where its tensors are made; "meta" allocates none (then `tiec.materialize`)."""
        from tiec.backends.torch import build_module

        if anchors is not None and device is not None and str(device).startswith("meta"):
            raise ValueError("anchors cannot be loaded into a module on the meta device (it holds no values); "
                             "load them after tiec.materialize(module), with module.load_anchors(...)")
        module = build_module(self.ir, self._model(model), seed, device)
        if anchors is not None:
            from tiec.anchors import load_anchors

            load_anchors(self.ir, module, self._model(model), anchors)
        return module

    def graph(self, path: str | os.PathLike | None = None, model: str | None = None,
              format: str | None = None) -> str:
        """The Graphviz DOT text of `model`'s dataflow, or (None) every model's: blocks and repeats as
        clusters, share groups coloured, ties as dashed edges (see `tiec graph`). With `path`, the
        drawing is also written there: `.svg`/`.png` rendered by Graphviz's `dot`, `.dot` as text."""
        from tiec.backends.graph import dot_source, output_format, write_graph

        if path is not None:
            output_format(path, format)  # an unknown format, or no Graphviz, before the work
        name = self._model(model)
        dot = dot_source(self.ir, name, title=self.path + (f" ({name})" if name else ""))
        if path is not None:
            write_graph(dot, path, format)
        return dot

    def python(self, model: str | None = None) -> str:
        """Standalone PyTorch source of the module `torch(model)` builds."""
        from tiec.backends.torch import generate_source

        return generate_source(self.ir, self._model(model))

    def onnx(self, path: str | os.PathLike, model: str | None = None, weights: Any = None, opset: int = 18,
             seed: int = 0, *, allow_nonfinite: bool = False, quantize: str | None = None,
             external_data: bool | None = None, progress: bool = False, convert: bool = False) -> dict:
        """Export `model` to ONNX at `path`. `weights`: a module from `torch()` (one model or all),
        a state dict, or a checkpoint file (safetensors, or `torch.save`); None means fresh weights
        from `seed`. nan and inf weights are an error unless `allow_nonfinite`. `quantize="int8"`
        stores each weight matrix once as int8 with a scale per row (weight-only; docs/cli.md).
        `external_data`: the weights go to `path + ".data"`, streamed (None: only past 2 GiB);
        `progress`: a progress bar on standard error for a long export. `convert`: float weights of
        another float dtype are converted to their parameters' (as `tiec export --dtype` asks);
        without it that is an error, never a silent cast."""
        from tiec.backends.onnx import export

        name = self._model(model, required=True)
        arrays = self.weights_for(name, weights, seed, allow_nonfinite=allow_nonfinite, convert=convert)
        return export(self.ir, name, str(path), arrays, opset=opset, quantize=quantize, external_data=external_data,
                      progress=progress)

    def weights_for(self, model: str, weights: Any, seed: int = 0, *, allow_nonfinite: bool = False,
                    convert: bool = False) -> dict:
        """The arrays of `model`'s canonical parameters, from `weights` (see `onnx`; a share group's
        tensor may be under any member's key: `tiec.weights`)."""
        from tiec import weights as w

        if weights is None:
            weights = self.torch(model, seed)
        scope = w.Scope(self.ir, model)
        state = self._state(weights, model)
        return {k: w.to_array(v) for k, v in w.resolve(scope, state, allow_nonfinite, convert).items()}

    def save(self, weights: Any, path: str | os.PathLike, model: str | None = None, *,
             allow_nonfinite: bool = False) -> dict:
        """Write `weights` (a module from `torch(model)`, or its state dict) to the safetensors file
        `path`: one tensor per share group under its canonical key, in its own dtype, the other
        members' keys recorded in the file's metadata (rules: `tiec.weights`). `model` None: the
        module of `torch()` (every model, qualified keys, when the file has several).

        Returns:
            {"path", "tensors", "aliases", "bytes"}."""
        from tiec import weights as w

        scope = w.Scope(self.ir, self._scope(model))
        return w.save(scope, self._state(weights, scope.model), path, allow_nonfinite)

    def load_weights(self, path: str | os.PathLike, model: str | None = None, *,
                     allow_nonfinite: bool = False) -> dict:
        """The state dict in the checkpoint at `path` (safetensors, or `torch.save`), checked, in
        the keys of `torch(model)`'s module, so that `module.load_state_dict(sd, strict=True)`
        loads it: a share group's tensor may be under any member's key in the file, and is given
        under every key the module holds. Tensors keep the file's dtype."""
        from tiec import weights as w

        scope = w.Scope(self.ir, self._scope(model))
        return w.state_dict(scope, self._state(path, scope.model), allow_nonfinite)

    def _scope(self, model: str | None) -> str | None:
        """The model whose local keys `torch(model)` uses, or None for qualified keys."""
        if model is None and len(self.models) == 1:
            return self.models[0]
        return self._model(model)

    def _state(self, weights: Any, model: str | None) -> Mapping:
        """`weights` (a module, a mapping, or a checkpoint file's path) as a mapping."""
        import torch

        from tiec import weights as w

        where = self.ir.models[model or self.models[0]].span
        origin = None
        if isinstance(weights, (str, os.PathLike)):
            origin = os.fspath(weights)
            weights = w.read(origin, where)
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        if not isinstance(state, Mapping):
            if origin is None:
                raise TieError(f"weights must be a module, a state dict or a saved state dict file: got {_got(state)}",
                               where)
            raise TieError(f"{origin} does not hold a state dict: got {_got(state)}", where,
                           hint="save a mapping of parameter names to tensors: torch.save(module.state_dict(), path)")
        return state


def _got(value: Any) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)}"


def loads(text: str, overrides: Mapping[str, int | float] | None = None, filename: str = "<string>",
          dtype: str = "f32") -> Program:
    """Compile .tie source text. `overrides`: {"d": 64} sets d in every model that has it,
    {"Encoder.d": 64} in one model only. `dtype`: the parameters' and float inputs' dtype where
    the spec names none ("f32", "f16", "bf16" or "f64")."""
    return Program(compile_source(text, filename, overrides, dtype=dtype), filename)


def load(path: str | os.PathLike, overrides: Mapping[str, int | float] | None = None, dtype: str = "f32") -> Program:
    """Compile the .tie file at `path` (at most `MAX_SOURCE_BYTES`, UTF-8); see `loads`."""
    return Program(compile_source(_read_source(str(path)), str(path), overrides, dtype=dtype), str(path))


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
