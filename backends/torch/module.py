"""The live module: the emitted source, compiled and executed, then instantiated deterministically.

The source is registered with `linecache` under `<tiec:ClassName>` so tracebacks and `inspect`
show the generated lines. Construction runs under a forked RNG seeded with `seed`: the same
seed gives the same weights, and the caller's global RNG state is left as it was.
"""
from __future__ import annotations

import linecache

import torch
from tiec.compiler.ir import ProgramIR, bindings
from torch import nn

from .codegen import class_names, generate_source


def build_module(ir: ProgramIR, model: str | None = None, seed: int = 0) -> nn.Module:
    """Instantiate the module `generate_source(ir, model)` defines.

    Args:
        ir: a verified program.
        model: the model to build; None builds `Program` (or `Program_`, see `class_names`), holding
            every model.
        seed: seeds weight initialisation (the global RNG is not disturbed).

    Returns:
        The module, with its model parameters at their compiled values.
    """
    source = generate_source(ir, model)
    cls_name = class_names(ir)[model]
    filename = f"<tiec:{cls_name}>"  # the class name: a model named Program has a file of its own
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict = {"__name__": f"tiec_generated_{cls_name}"}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated source
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = namespace[cls_name]()
    _check_keys(ir, model, module)
    return module


def _check_keys(ir: ProgramIR, model: str | None, module: nn.Module) -> None:
    """The state-dict keys are the declared parameters, less those shared transposed."""
    want = {k for k, b in bindings(ir, model).items() if not b.transposed}
    got = set(module.state_dict())
    if got != want:
        raise RuntimeError(
            f"tiec torch backend: state-dict keys differ from the IR's parameters "
            f"(missing {sorted(want - got)}, unexpected {sorted(got - want)}); this is a compiler bug"
        )
