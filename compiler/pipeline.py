"""The compiler pipeline: text → AST → IR → shared groups → types, verified after each pass."""
from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tiec.dsl.parser import parse

from . import ir, shapes, sharing
from .toplevel import elaborate
from .verify import verify

PASSES = (sharing.run, shapes.run)


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Compiling allocates many long-lived objects (AST, IR, spans) and frees almost nothing;
    # the cyclic collector would rescan them again and again, costing about half the time of a
    # large spec. Reference counting still frees everything; collection resumes afterwards.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compile_source(text: str, filename: str = "<string>",
                   overrides: Mapping[str, int | float] | None = None, check: bool = True) -> ir.ProgramIR:
    """Compile .tie source to a verified `ProgramIR`; raises `TieError` on bad input."""
    with _gc_paused():
        program = elaborate(parse(text, filename), overrides)
        for run in PASSES:
            program = run(program)
            if check:
                verify(program)
    return program
