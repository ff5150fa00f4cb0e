"""Type rules of a loop over a runtime dimension (`repeat x_t in unbind(x, dim)`), shared by the
structured pass (`typecheck`) and the flat one (`shapes.infer`): one step's body stands for all."""
from __future__ import annotations

from tiec.dsl.diagnostics import TieError

from . import shapes
from .ir import Dim
from .ir import TensorType as T


def scan_dim(source: T, dim: int, span) -> int:
    """The dim a loop over a runtime dimension steps along, counted from the start."""
    if not -len(source.shape) <= dim < len(source.shape):
        raise TieError(f"dim {dim} is out of range for a {len(source.shape)}-D tensor ({source})", span)
    return dim % len(source.shape)


def check_carried(name: str, before: T, after: T, span) -> None:
    """A value carried from step to step keeps its type: one step's body stands for every step."""
    if before.dtype != after.dtype or len(before.shape) != len(after.shape) or not all(
            shapes.same(a, b) for a, b in zip(before.shape, after.shape)):
        raise TieError(f"'{name}' is {before} before a step and {after} after it; a value carried across the "
                       "steps of a repeat over a tensor must keep its type", span)


def stacked_type(step: T, length: Dim, dim: int, span) -> T:
    """Every step's value stacked along `dim`, as torch.stack(values, dim) makes it."""
    if dim > len(step.shape):
        raise TieError(f"each step's value is {step}: it cannot be stacked along dim {dim}", span,
                       hint="stacked values are stacked along the dim the loop steps through")
    return T(step.dtype, step.shape[:dim] + (length,) + step.shape[dim:])
