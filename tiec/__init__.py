"""tiec: compile .tie model specs with shared and tied parameters to PyTorch and ONNX."""
from tiec.dsl.diagnostics import TieError, TieErrors, TieWarning

__all__ = ["TieError", "TieErrors", "TieWarning", "load", "loads", "materialize"]


def load(path, overrides=None, dtype="f32"):
    """Compile the .tie file at `path` (model parameters overridden by `overrides`; `dtype` for
    parameters and float inputs the spec gives none) → Program."""
    from tiec.api import load as _load

    return _load(path, overrides, dtype)


def loads(text, overrides=None, filename="<string>", dtype="f32"):
    """Compile .tie source text → Program (see `load`)."""
    from tiec.api import loads as _loads

    return _loads(text, overrides, filename, dtype)


def materialize(module, device="cpu", seed=0):
    """Give a module built with `program.torch(device="meta")` the tensors `program.torch(seed=seed)`
    has, on `device`, one per share group (in place; returns it)."""
    from tiec.backends.torch import materialize as _materialize

    return _materialize(module, device, seed)


def __getattr__(name):
    # `tiec.compile(module)` without importing torch for everyone who only compiles specs
    if name == "compile":
        import importlib

        return importlib.import_module("tiec.compile")
    raise AttributeError(f"module 'tiec' has no attribute {name!r}")
