"""Front end: .tie text → AST, and the diagnostics users see."""
from .diagnostics import Source, Span, TieError, TieErrors, TieWarning
from .parser import parse

__all__ = ["Source", "Span", "TieError", "TieErrors", "TieWarning", "parse"]
