"""The compiler pipeline: text → AST → IR → shared groups → types, verified after each pass."""
from __future__ import annotations

from typing import Mapping

from tiec.dsl.parser import parse

from . import ir, shapes, sharing
from .elaborate import elaborate
from .verify import verify

PASSES = (sharing.run, shapes.run)


def compile_source(text: str, filename: str = "<string>",
                   overrides: Mapping[str, int | float] | None = None, check: bool = True) -> ir.ProgramIR:
    """Compile .tie source to a verified `ProgramIR`; raises `TieError` on bad input."""
    program = elaborate(parse(text, filename), overrides)
    for run in PASSES:
        program = run(program)
        if check:
            verify(program)
    return program
