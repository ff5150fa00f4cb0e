"""Weights: checkpoint files, share-group keys, and the checks every tensor passes on its way in.

A state dict names each tensor by a parameter key, local (`enc.weight`, as in `program.torch(M)`)
or qualified (`M.enc.weight`, as in the all-models `program.torch()`). Rules:
- A share group is one tensor. Any member's key may hold it: `wte.weight`, or `lm_head.weight`
  as `safetensors.torch.save_model` and `transformers` keep for GPT-2, or `dec.weight` holding
  `enc.weight.T`. Two members present with different values are an error naming both keys.
- A persistent buffer (`bn.running_mean`) is required like a parameter, under its own key only:
  a checkpoint without it is an error naming the key, never filled with the initial value.
- Each value must be a dense tensor (torch or numpy) of its parameter's kind: nothing is cast
  across kinds (an integer, bool or complex tensor is no float weight), and no meta, sparse,
  quantized or nested tensor is read. nan and inf are an error unless `allow_nonfinite`.
- A file is read by what it holds, not its name: safetensors (its header checked, each tensor's
  shape and dtype compared with its parameter before its bytes are read), or `torch.save`
  (`weights_only=True`, memory-mapped). Keys and metadata from a file are only ever looked up,
  never written into generated code.
- `save` writes one tensor per group under the canonical key, in its own dtype, and records the
  other members in the safetensors `__metadata__` as `safetensors.torch.save_model` does
  (`"lm_head.weight": "wte.weight"`; a transposed member's value ends in `.T`), with
  `"format": "pt"` for `transformers` and the groups as JSON under `tiec.groups`.
"""
from __future__ import annotations

import json
import math
import os
import reprlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tiec.compiler import ir
from tiec.compiler.buffers import declared_buffers
from tiec.dsl.diagnostics import Source, Span, TieError

if TYPE_CHECKING:
    import numpy as np

_PARAM_KINDS = {"f16": "float", "bf16": "float", "f32": "float", "f64": "float", "i32": "integer",
                "i64": "integer", "bool": "bool"}
_CAST_HINTS = {  # for a float parameter
    "complex": "converting it would drop the imaginary part; pass the real values you mean",
    "bool": "convert it explicitly (tensor.float()) if these are the values you mean",
    "integer": "convert it explicitly (tensor.float()) if these are the values you mean",
}
_SAFETENSORS_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                      "C64": "complex64"}  # as torch names them, so a file's dtype reads like a module's
NONFINITE_HINT = "pass --allow-nonfinite (API: allow_nonfinite=True) to keep them as they are"


class Scope:
    """The parameters a state dict names: one model's (local keys) or every model's (qualified).

    `candidates(key)` lists, for a canonical key, every state-dict key that may hold its tensor and
    whether that key holds it transposed, canonical first."""

    def __init__(self, program: ir.ProgramIR, model: str | None):
        self.program, self.model = program, model
        self.binds = ir.bindings(program, model)
        self.params: dict[str, ir.Param | ir.Buffer] = {}
        for name in ([model] if model is not None else program.models):
            for p in ir.declared_params(program, name):
                self.params[p.name if model is not None else ir.qualify(name, p.name)] = p
            for b in declared_buffers(program, name):  # required like a parameter, but never shared
                key = b.name if model is not None else ir.qualify(name, b.name)
                self.params[key] = b
                self.binds[key] = ir.Binding(key, False, None)
        self.canonicals = sorted({b.canonical for b in self.binds.values()})
        # global group of each qualified member: (qualified key, transposed relative to its canonical)
        self._groups: dict[str, list[tuple[str, bool]]] = {}
        for group in program.share_groups:
            head = group.members[0].transposed
            members = [(m.param, m.transposed != head) for m in group.members]
            for m, _ in members:
                self._groups[m] = members

    def qualified(self, key: str) -> str:
        return key if self.model is None else ir.qualify(self.model, key)

    def candidates(self, canon: str) -> list[tuple[str, bool]]:
        qualified = self.qualified(canon)
        members = self._groups.get(qualified, [(qualified, False)])
        flip = next(t for m, t in members if m == qualified)  # orientation of `canon` in its group
        out = []
        for member, transposed in sorted(members, key=lambda m: m[0] != qualified):
            model, local = ir.split(member)
            keys = [local, member] if model == self.model else [member]
            out += [(k, transposed != flip) for k in keys if (k, transposed != flip) not in out]
        return out

    def aliases(self) -> dict[str, tuple[str, bool]]:
        """Each non-canonical key of the scope → (its canonical, read transposed)."""
        return {k: (b.canonical, b.transposed) for k, b in self.binds.items() if b.canonical != k}


def resolve(scope: Scope, state: Mapping, allow_nonfinite: bool = False, convert: bool = False) -> dict[str, Any]:
    """Each canonical key of `scope` → its checked value from `state` (see `checked_value`), read
    from whichever member key holds it (transposed back to the canonical orientation). Raises
    `TieError` for a missing parameter, a bad value, or members that disagree. `convert`: a float
    weight of another float dtype is converted to its parameter's (the caller asked for that
    dtype, e.g. `tiec export --dtype f16`); without it, that is an error."""
    out, missing = {}, []
    for canon in scope.canonicals:
        param = scope.params[canon]
        found = [(k, t) for k, t in scope.candidates(canon) if k in state]
        if not found:
            missing.append(canon)
            continue
        value = None
        for key, transposed in found:
            got = checked_value(key, state, param, transposed, allow_nonfinite, convert)
            got = got.T if transposed else got
            if value is None:
                first, value = key, got
            elif not _same(got, value):
                raise TieError(f"weights '{first}' and '{key}' are one shared tensor, but hold different values",
                               param.span, hint="keep one of the two keys, or make their values equal")
        out[canon] = value
    if missing:
        model = scope.model or next(iter(scope.program.models))
        everywhere = ir.bindings(scope.program) if scope.model is not None else {}
        foreign = [everywhere[scope.qualified(m)] for m in missing if scope.qualified(m) in everywhere]
        foreign = [f"{b.canonical}{'.T' if b.transposed else ''}" for b in foreign
                   if ir.split(b.canonical)[0] != scope.model]
        hint = (f"its tensor lives in another model ({foreign[0]}): pass the module holding every model, "
                "program.torch()") if foreign else "pass the module from program.torch(), or its state_dict()"
        what, where = "parameter", scope.program.models[model].span
        if all(isinstance(scope.params[m], ir.Buffer) for m in missing):  # never made up from the initial value
            what, where = "buffer", scope.params[missing[0]].span
            hint = "save the whole state dict (module.state_dict() holds the buffers too)"
        raise TieError(f"the weights lack {len(missing)} {what}(s) of {scope.model or 'the program'}: "
                       f"{', '.join(missing[:5])}", where, hint=hint)
    return out


def _same(a: Any, b: Any) -> bool:
    """Whether two checked values are equal, element for element (nan equal to nan)."""
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if (a.dtype, a.shape, a.stride(), a.data_ptr()) == (b.dtype, b.shape, b.stride(), b.data_ptr()):
            return True  # one tensor under two keys, as a module's state dict holds a shared parameter
        return a.dtype == b.dtype and (torch.equal(a, b) or a.is_floating_point()
                                       and bool(torch.isclose(a, b, 0, 0, equal_nan=True).all()))
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def checked_value(key: str, state: Mapping, param: ir.Param, transposed: bool = False,
                  allow_nonfinite: bool = False, convert: bool = False) -> Any:
    """`state[key]`, meant for `param` (read transposed or not), checked as the module docstring
    says (shape included, before a file's bytes are read): a numpy array as given, or a torch
    tensor detached onto the CPU in its own dtype."""
    import numpy as np
    import torch

    where = param.span
    want = tuple(reversed(param.shape)) if transposed else tuple(param.shape)
    if isinstance(state, Checkpoint):
        shape, dtype = state.header(key)
        _check_kind(key, _kind(dtype), _SAFETENSORS_NAMES.get(dtype, dtype.lower()), param, convert)
        _check_shape(key, shape, want, param)
    value = state[key]
    if isinstance(value, np.ndarray):
        kind = {"f": "float", "c": "complex", "b": "bool", "i": "integer", "u": "integer"}.get(value.dtype.kind, "other")
        _check_kind(key, kind, str(value.dtype), param, convert)
        if convert and kind == "float" and str(value.dtype) != _NUMPY_NAMES.get(param.dtype, str(value.dtype)):
            value = value.astype(_NUMPY_NAMES[param.dtype])
        bad = _nonfinite(value) if kind == "float" and not allow_nonfinite else None
    elif isinstance(value, torch.Tensor):
        unreadable = _unreadable(value)
        if unreadable:
            raise TieError(f"weight '{key}' is {unreadable[0]}", where, hint=unreadable[1])
        _check_kind(key, _kind(value.dtype), str(value.dtype).removeprefix("torch."), param, convert)
        value = value.detach().cpu()
        if convert and value.is_floating_point():
            value = value.to(getattr(torch, {v: k for k, v in _FLOAT_NAMES.items()}[param.dtype]))
        bad = _nonfinite(value) if value.is_floating_point() and not allow_nonfinite else None
    else:
        raise TieError(f"weight '{key}' is not a tensor: got {_got(value)}", where,
                       hint="a state dict maps each parameter name to a torch.Tensor")
    _check_shape(key, tuple(value.shape), want, param)
    if bad is not None:
        first = [int(i) for i in np.argwhere(np.asarray(bad))[0]]
        sample = value[bad][:1000]
        sample = sample.double().tolist() if isinstance(sample, torch.Tensor) else sample.astype(np.float64).tolist()
        kinds = sorted({"nan" if math.isnan(v) else "inf" for v in sample})
        raise TieError(f"weight '{key}' holds {int(bad.sum()):,} non-finite value(s) ({', '.join(kinds)}; "
                       f"the first at {first})", where, hint=NONFINITE_HINT)
    return value


def _nonfinite(value: Any) -> Any:
    """The mask of `value`'s nan and inf entries, or None when it has none: the smallest and the
    largest value are finite exactly when every value is (both propagate nan; an inf is one of
    them), so a clean tensor costs one read, and only a bad one the elementwise look."""
    import numpy as np
    import torch

    if value.size == 0 if isinstance(value, np.ndarray) else value.numel() == 0:
        return None
    if isinstance(value, torch.Tensor):
        low, high = torch.aminmax(value)
        if math.isfinite(low.item()) and math.isfinite(high.item()):
            return None
        return ~torch.isfinite(value)
    if math.isfinite(float(value.min())) and math.isfinite(float(value.max())):
        return None
    return ~np.isfinite(value)


def _kind(dtype: Any) -> str:
    import torch

    if isinstance(dtype, str):  # a safetensors header's dtype
        return {"F": "float", "B": "float", "C": "complex", "I": "integer", "U": "integer"}.get(
            dtype[0], "bool" if dtype == "BOOL" else "other")
    return ("float" if dtype.is_floating_point else "complex" if dtype.is_complex
            else "bool" if dtype == torch.bool else "integer")


def _check_kind(key: str, kind: str, dtype: str, param: ir.Param, convert: bool = False) -> None:
    if kind != _PARAM_KINDS[param.dtype]:
        raise TieError(f"weight '{key}' has dtype {dtype}, but the parameter is {param.dtype}", param.span,
                       hint=_CAST_HINTS.get(kind) if _PARAM_KINDS[param.dtype] == "float" else None)
    if kind == "float" and not convert and _FLOAT_NAMES.get(dtype) != param.dtype:  # never cast unasked
        target = {v: k for k, v in _FLOAT_NAMES.items()}.get(param.dtype, param.dtype)
        raise TieError(f"weight '{key}' has dtype {dtype}, but the parameter is {param.dtype}", param.span,
                       hint=f"convert the weights to {target} first if that is what you mean "
                            f"(module.to(torch.{target}), or tensor.to(torch.{target}) for one tensor)")


_FLOAT_NAMES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64"}
_NUMPY_NAMES = {"f32": "float32", "f16": "float16", "f64": "float64"}  # numpy has no bfloat16


def _check_shape(key: str, shape: tuple, want: tuple, param: ir.Param) -> None:
    if tuple(shape) != want:
        raise TieError(f"weight '{key}' has shape {list(shape)}, the model needs {list(want)}", param.span)


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


def to_array(value: Any) -> np.ndarray:
    """A checked value as a contiguous numpy array in its own dtype (a bfloat16 tensor as the same
    bits in ml_dtypes' bfloat16, which onnx uses: numpy has none), a numpy array as it is."""
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    if value.dtype == torch.bfloat16:
        import ml_dtypes

        return value.detach().contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.detach().contiguous().numpy()


class Checkpoint(Mapping):
    """A safetensors file, read lazily: keys and each tensor's shape and dtype come from its header
    (validated by the safetensors library), a tensor's bytes only when it is asked for."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        self._file = safe_open(path, framework="pt")
        self._keys = list(self._file.keys())
        self.metadata = self._file.metadata() or {}

    def header(self, key: str) -> tuple[tuple[int, ...], str]:
        piece = self._file.get_slice(key)
        return tuple(piece.get_shape()), piece.get_dtype()

    def __getitem__(self, key: str):
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def read(path: str | os.PathLike, where: Span) -> Any:
    """The state dict in the file at `path`: safetensors (lazily), or `torch.save`d (weights only)."""
    import torch

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
            return Checkpoint(path)
        zipped = head.startswith(b"PK\x03\x04")  # torch.save's zip format can be mapped, not read
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise TieError(f"cannot read weights from {path}: {e}", where) from None


def save(scope: Scope, state: Mapping, path: str | os.PathLike, allow_nonfinite: bool = False) -> dict[str, Any]:
    """Write `state` to the safetensors file `path` (a regular file, replaced atomically by the
    rules of `tiec.output`; see the module docstring).
    Every key of `state` must name a parameter of `scope`: nothing is dropped unsaid."""
    from safetensors.torch import save_file

    from tiec.output import written_together

    known = {k for canon in scope.canonicals for k, _ in scope.candidates(canon)}
    extra = sorted(k for k in state if k not in known)
    if extra:
        where = scope.program.models[scope.model].span if scope.model else _nowhere(os.fspath(path))
        raise TieError(f"the weights hold {len(extra)} key(s) that name no parameter of "
                       f"{scope.model or 'the program'}: {', '.join(map(repr, extra[:5]))}", where,
                       hint="save the state dict of the module that program.torch() builds for this scope")
    tensors = _separate(resolve(scope, state, allow_nonfinite))
    metadata = {"format": "pt"}
    groups: dict[str, list] = {}
    for alias, (canon, transposed) in sorted(scope.aliases().items()):
        metadata[alias] = canon + (".T" if transposed else "")
        groups.setdefault(canon, []).append({"key": alias, "transposed": transposed})
    metadata["tiec.groups"] = json.dumps([{"tensor": c, "aliases": a} for c, a in groups.items()],
                                         separators=(",", ":"))
    if scope.model is not None:
        metadata["tiec.model"] = scope.model
    with written_together(path, ()) as (tmp, _):  # written tensor by tensor, never whole in memory
        save_file(tensors, tmp, metadata)
        size = os.path.getsize(tmp)
    return {"path": os.fspath(path), "tensors": len(tensors), "aliases": len(metadata) - 2 - (scope.model is not None),
            "bytes": size}


def _separate(values: dict[str, Any]) -> dict[str, Any]:
    """Checked values as contiguous torch tensors that share no memory (safetensors refuses two
    names on one storage): a numpy array becomes a tensor, a view of a storage already taken is
    copied."""
    import numpy as np
    import torch

    out, taken = {}, set()
    for key, value in values.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value, copy=not value.flags.writeable, order="C"))
        value = value.contiguous()
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.clone() if ptr in taken else value
        taken.add(ptr)
    return out


def state_dict(scope: Scope, state: Mapping, allow_nonfinite: bool = False) -> dict[str, Any]:
    """The state dict that a module of `scope` loads with `load_state_dict(strict=True)`: each
    canonical tensor, and the same tensor under each member's key that the module holds too (a
    member read untransposed is the same `nn.Parameter`; a transposed one has no key)."""
    tensors = resolve(scope, state, allow_nonfinite)
    for alias, (canon, transposed) in scope.aliases().items():
        if not transposed:
            tensors[alias] = tensors[canon]
    return dict(sorted(tensors.items()))


def _nowhere(path: str) -> Span:
    return Span(Source(path, ""), 0, 0, 0, 0)
