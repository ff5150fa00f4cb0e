"""Source positions and the one error type users see.

Every diagnostic is a `TieError` carrying a `Span`; `render()` prints the compiler-style
`file:line:col: error: message`, the source line, a caret under the offending text, and an
optional hint and notes (other spans, e.g. the declaration a shape mismatch points back to).
Several independent errors travel together as `TieErrors`.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Source:
    """A named source text (a .tie file or an in-memory string)."""

    name: str
    text: str

    @cached_property
    def lines(self) -> tuple[str, ...]:
        """The text split once, however many diagnostics quote it (re-splitting per diagnostic
        made printing n warnings cost O(n · file size)). Split as the lexer counts lines: on
        `\\n` only, not at form feeds or U+2028."""
        return tuple(self.text.split("\n"))

    def line(self, n: int) -> str:
        lines = self.lines
        if 0 < n <= len(lines):
            return lines[n - 1].rstrip("\r")
        return ""


@dataclass(frozen=True)
class Span:
    """A 1-based line/column range within a source."""

    source: Source = field(compare=False, repr=False)
    line: int
    col: int
    end_line: int
    end_col: int

    @property
    def file(self) -> str:
        return self.source.name

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"


_NO_SOURCE = Source("<builtin>", "")
NOWHERE = Span(_NO_SOURCE, 0, 0, 0, 0)


def _excerpt(span: Span) -> list[str]:
    text = span.source.line(span.line)
    if not text or span.line <= 0:
        return []
    width = (span.end_col - span.col) if span.end_line == span.line else len(text) - span.col + 1
    width = max(1, width)
    pad = "".join(c if c == "\t" else " " for c in text[: span.col - 1])
    return [f"    {text}", f"    {pad}{'^' * width}"]


class TieError(Exception):
    """A user-facing error in a .tie program: message, where, and how to fix it."""

    severity = "error"

    def __init__(
        self,
        message: str,
        span: Span = NOWHERE,
        hint: str | None = None,
        notes: Sequence[tuple[Span, str]] = (),
    ):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = tuple(notes)

    def render(self) -> str:
        head = f"{self.span}: " if self.span.line > 0 else f"{self.span.file}: "
        out = [f"{head}{self.severity}: {self.message}", *_excerpt(self.span)]
        for span, text in self.notes:
            out.append(f"{span}: note: {text}")
            out.extend(_excerpt(span))
        if self.hint:
            out.append(f"    hint: {self.hint}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class TieWarning(TieError):
    """A diagnostic that does not stop compilation (rendered with `warning:`)."""

    severity = "warning"


class TieErrors(TieError):
    """Several independent errors found in one run, reported together."""

    def __init__(self, errors: Iterable[TieError]):
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.message, first.span, first.hint, first.notes)

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


def raise_all(errors: Sequence[TieError]) -> None:
    """Raise nothing, the one error, or all of them together."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise TieErrors(errors)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, if any is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
