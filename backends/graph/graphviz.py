"""Rendering DOT text to SVG or PNG, and writing a drawing's file.

Rule: the format comes from `format` or else the output's extension (`.svg`, `.png`; `.dot` and
`.gv` are the DOT text itself). SVG and PNG are laid out by `graphviz-pure`, Graphviz's `dot`
command line from a pip wheel (a dependency of tiec, installed beside its Python: no system
program is needed); a system Graphviz `dot` on `PATH` serves where that wheel is missing. The
program is looked up before any work, so a missing one is reported at once, with the way around
it; the rendered bytes are written through `tiec.output`, so a failed render leaves no file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

from tiec.dsl.diagnostics import Source, Span, TieError

from tiec.output import write_output

FORMATS = {".svg": "svg", ".png": "png", ".dot": "dot", ".gv": "dot"}
RENDER_TIMEOUT_S = 300  # a layout of MAX_GRAPH_NODES nodes takes well under this


def _error(output: str, message: str, hint: str | None = None) -> TieError:
    return TieError(f"cannot write {output}: {message}", Span(Source(output, ""), 0, 0, 0, 0), hint=hint)


WHEEL_PROGRAM = "graphviz-pure"


def layout_program() -> str | None:
    """The `dot`-compatible program to run: the graphviz-pure wheel's, beside this interpreter or on
    PATH, else a system Graphviz `dot`; None when there is neither."""
    beside = os.path.join(sysconfig.get_path("scripts"), WHEEL_PROGRAM)
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which(WHEEL_PROGRAM) or shutil.which("dot")


def output_format(output: str | os.PathLike, format: str | None = None) -> str:
    """The format to write `output` in ("svg", "png" or "dot"); raises a `TieError` when it is
    unknown, or when it needs Graphviz and `dot` is not on `PATH`."""
    output = os.fspath(output)
    fmt = format or FORMATS.get(os.path.splitext(output)[1].lower())
    if fmt not in FORMATS.values():
        raise _error(output, "cannot tell the drawing's format from its name",
                     hint="name it .svg, .png or .dot, or pass --format svg|png|dot")
    if fmt != "dot" and layout_program() is None:
        raise _error(output, f"rendering {fmt.upper()} needs Graphviz's `dot` program, which is not installed",
                     hint="write the DOT text instead (-o model.dot) and render it elsewhere, or install tiec's "
                          "renderer: pip install graphviz-pure")
    return fmt


def render(dot: str, fmt: str, output: str = "<graph>") -> bytes:
    """`dot` rendered by Graphviz as `fmt` ("svg" or "png"); the DOT text itself for "dot"."""
    if fmt == "dot":
        return dot.encode("utf-8")
    exe = layout_program()
    if exe is None:
        output_format(output, fmt)  # raises the missing-Graphviz error
    try:
        done = subprocess.run([exe, f"-T{fmt}"], input=dot.encode("utf-8"), capture_output=True,
                              timeout=RENDER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise _error(output, f"Graphviz took over {RENDER_TIMEOUT_S} s to lay the graph out",
                     hint="draw one model (--model) or fewer repeats (--set)") from None
    except OSError as e:
        raise _error(output, f"cannot run {exe}: {e.strerror or e}") from None
    if done.returncode != 0 or not done.stdout:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise _error(output, f"Graphviz failed (exit status {done.returncode})" + (f": {why[-1]}" if why else ""))
    return done.stdout


def write_graph(dot: str, output: str | os.PathLike, format: str | None = None) -> str:
    """Render `dot` in the format `output_format` picks and write it to `output` atomically;
    returns the format."""
    output = os.fspath(output)
    fmt = output_format(output, format)
    write_output(output, render(dot, fmt, output))
    return fmt
