"""The live module: the emitted source, run as a real Python module, then instantiated deterministically.

Each distinct source text becomes one module, registered in `sys.modules` under a name derived
from its hash (`tiec_generated_<hash>`) and in `linecache` under a file name of its own, so
tracebacks, `inspect.getsource` and `pickle` find the lines that really ran, even when two specs
define a model of the same name. An instance pickles (and deep-copies) as "the class `qualname`
of this source", carrying the source text itself, so `torch.load(weights_only=False)` rebuilds
it in a fresh process that has only `import tiec`. Construction runs under a forked RNG seeded
with `seed`: the same seed gives the same weights, and the caller's RNG state is left alone.
"""
from __future__ import annotations

import hashlib
import linecache
import sys
import types

import torch
from tiec.compiler.buffers import declared_buffers
from tiec.compiler.ir import ProgramIR, bindings, qualify
from torch import nn

from .codegen import class_names, generate_source


def build_module(ir: ProgramIR, model: str | None = None, seed: int = 0, device: str | torch.device | None = None
                 ) -> nn.Module:
    """Instantiate the module `generate_source(ir, model)` defines.

    Args:
        ir: a verified program.
        model: the model to build; None builds `Program` (or `Program_`, see `class_names`), holding
            every model.
        seed: seeds weight initialisation (the global RNG is not disturbed).
        device: where the tensors are made; "meta" allocates none (`materialize` gives it the values
            `seed` gives on the CPU). None: the CPU.

    Returns:
        The module, with its model parameters at their compiled values.
    """
    if model is None and len(ir.models) == 1:  # one model needs no Program around it
        model = next(iter(ir.models))
    cls = _class(generate_source(ir, model), class_names(ir)[model])
    if device is None:
        module = construct(cls, seed)
    else:
        with torch.device(device):
            module = construct(cls, seed)
    _check_keys(ir, model, module)
    return module


def construct(cls: type, seed: int) -> nn.Module:
    """`cls()` under a forked RNG seeded with `seed`: the same seed, the same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls()


def source_module(source: str) -> types.ModuleType:
    """The module that runs `source`: made (and registered) once per distinct text."""
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    name = f"tiec_generated_{digest}"
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__tiec_source__", None) == source:
        return mod
    filename = f"<tiec-generated-{digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    mod = types.ModuleType(name)
    mod.__file__ = filename
    mod.__tiec_source__ = source
    sys.modules[name] = mod
    try:
        exec(compile(source, filename, "exec"), mod.__dict__)  # noqa: S102 - our own generated source
    except BaseException:
        del sys.modules[name]
        raise
    for value in list(mod.__dict__.values()):
        if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == name:
            value.__reduce_ex__ = _reduce_ex
    return mod


def _class(source: str, qualname: str) -> type:
    return getattr(source_module(source), qualname)


def _reduce_ex(self: nn.Module, protocol: int):
    # object's own reduction, with the class replaced by (source, name): pickling by reference
    # would need the generated module importable, which no fresh process has
    rv = object.__reduce_ex__(self, protocol)
    source = sys.modules[type(self).__module__].__tiec_source__
    return (_new_instance, (source, type(self).__qualname__), *rv[2:])


def _new_instance(source: str, qualname: str) -> nn.Module:
    """Unpickling: an empty instance of class `qualname` of `source`; pickle restores its state."""
    cls = _class(source, qualname)
    return cls.__new__(cls)


def _check_keys(ir: ProgramIR, model: str | None, module: nn.Module) -> None:
    """The state-dict keys are the declared parameters, less those shared transposed, and the
    persistent buffers."""
    want = {k for k, b in bindings(ir, model).items() if not b.transposed}
    for name in [model] if model is not None else ir.models:
        want |= {b.name if model is not None else qualify(name, b.name) for b in declared_buffers(ir, name)}
    got = set(module.state_dict())
    if got != want:
        raise RuntimeError(
            f"tiec torch backend: state-dict keys differ from the IR's parameters "
            f"(missing {sorted(want - got)}, unexpected {sorted(got - want)}); this is a compiler bug"
        )
