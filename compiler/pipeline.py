"""The compiler pipeline: text → AST → IR → shared groups → types, verified after each pass."""
from __future__ import annotations

import gc
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tiec.dsl.diagnostics import Source, Span, TieError
from tiec.dsl.parser import parse

from . import ir, shapes, sharing
from .toplevel import elaborate
from .verify import verify

PASSES = (sharing.run, shapes.run)


@contextmanager
def _compiling() -> Iterator[None]:
    # Compiling allocates many long-lived objects (AST, IR, spans) and frees almost nothing;
    # the cyclic collector would rescan them again and again, costing about half the time of a
    # large spec. Reference counting still frees everything; collection resumes afterwards.
    # Expressions are walked recursively: a generated spec may sum hundreds of terms.
    enabled, limit = gc.isenabled(), sys.getrecursionlimit()
    gc.disable()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)
        if enabled:
            gc.enable()


def compile_source(text: str, filename: str = "<string>",
                   overrides: Mapping[str, int | float] | None = None, check: bool = True) -> ir.ProgramIR:
    """Compile .tie source to a verified `ProgramIR`; raises `TieError` on bad input."""
    try:
        with _compiling():
            program = elaborate(parse(text, filename), overrides)
            for run in PASSES:
                program = run(program)
                if check:
                    verify(program)
    except RecursionError:
        raise TieError("an expression is nested too deeply to compile", Span(Source(filename, text), 0, 0, 0, 0),
                       hint="split it into several assignments") from None
    return program
