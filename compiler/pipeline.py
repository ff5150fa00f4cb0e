"""The compiler pipeline: text → AST → IR → shared groups → types, verified after each pass."""
from __future__ import annotations

from collections.abc import Mapping

from tiec.dsl.diagnostics import Source, Span, TieError
from tiec.dsl.parser import parse

from . import ir, sharing, typecheck
from .catalog import FLOAT_DTYPES
from .toplevel import elaborate
from .verify import verify

PASSES = (sharing.run, typecheck.run)


def compile_source(text: str, filename: str = "<string>",
                   overrides: Mapping[str, int | float] | None = None, check: bool = True,
                   dtype: str = "f32") -> ir.ProgramIR:
    """Compile .tie source to a verified `ProgramIR`; raises `TieError` on bad input. `dtype`: the
    parameters' and float inputs' dtype where the spec names none (f32, f16, bf16 or f64)."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, not {dtype!r}")
    try:
        program = elaborate(parse(text, filename), overrides, dtype)
        for run in PASSES:
            program = run(program)
            if check:
                verify(program)
    except RecursionError:  # the nesting limits should make this unreachable: still no traceback
        raise TieError("an expression is nested too deeply to compile", Span(Source(filename, text), 0, 0, 0, 0),
                       hint="split it into several assignments") from None
    return program
