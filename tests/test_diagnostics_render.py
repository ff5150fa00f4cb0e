"""`TieError.render()` (position, caret width, notes, hints, several errors) and `--set` overrides.

The override tests recompute `tiec stats examples/deep_shared.tie --json` by hand: a `Residual(d)`
block holds LayerNorm(d) (2d), Linear(d, 4d) (4d² + 4d) and Linear(4d, d) (4d² + d), that is
8d² + 7d; the head is Linear(d, 10), 10d + 10. `Deep` has `depth` blocks of its own, `DeepShared`
one block called `depth` times.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiec.dsl.diagnostics import NOWHERE, Source, Span, TieError, TieErrors, TieWarning, did_you_mean, raise_all

from tiec.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEEP = ROOT / "examples" / "deep_shared.tie"
SRC = Source("m.tie", "model M {\n    h = relu(xx) + y\n\tz = 1\n}\n")


def span(line: int, col: int, end_line: int, end_col: int) -> Span:
    return Span(SRC, line, col, end_line, end_col)


# ----------------------------------------------------------------------------- render


def test_render_position_and_caret_width():
    e = TieError("unknown name 'xx'", span(2, 14, 2, 16))
    assert e.render() == ("m.tie:2:14: error: unknown name 'xx'\n"
                          "        h = relu(xx) + y\n"
                          "                 ^^")
    assert str(e) == e.render()


def test_render_caret_runs_to_end_of_line_for_multiline_span():
    lines = TieError("too long", span(2, 9, 3, 3)).render().splitlines()
    assert lines[2] == "        " + " " * 4 + "^" * len("relu(xx) + y")


def test_render_empty_span_still_shows_one_caret():
    lines = TieError("here", span(2, 5, 2, 5)).render().splitlines()
    assert lines[2] == "        ^"


def test_render_keeps_tabs_so_the_caret_lines_up():
    lines = TieError("tab", span(3, 2, 3, 3)).render().splitlines()
    assert lines[1] == "    \tz = 1" and lines[2] == "    \t^"


def test_render_without_a_position():
    assert TieError("cannot read", Span(SRC, 0, 0, 0, 0)).render() == "m.tie: error: cannot read"
    assert TieError("builtin").render() == f"{NOWHERE.file}: error: builtin"


def test_render_notes_then_hint():
    e = TieError("shapes differ", span(2, 9, 2, 17), hint="use .T",
                 notes=[(span(1, 7, 1, 8), "declared here"), (span(3, 2, 3, 3), "and here")])
    lines = e.render().splitlines()
    assert lines[0] == "m.tie:2:9: error: shapes differ"
    assert lines[3:6] == ["m.tie:1:7: note: declared here", "    model M {", "          ^"]
    assert lines[6] == "m.tie:3:2: note: and here"
    assert lines[-1] == "    hint: use .T"
    assert len(lines) == 10


def test_warning_severity():
    w = TieWarning("unused", span(2, 5, 2, 6))
    assert w.render().startswith("m.tie:2:5: warning: unused")
    assert isinstance(w, TieError)


def test_several_errors_render_together():
    a, b = TieError("first", span(2, 5, 2, 6)), TieError("second", span(3, 2, 3, 3), hint="fix it")
    both = TieErrors([a, b])
    assert both.errors == (a, b) and both.message == "first" and both.span == a.span
    assert both.render() == a.render() + "\n" + b.render()


def test_raise_all():
    raise_all([])
    one = TieError("one")
    with pytest.raises(TieError) as info:
        raise_all([one])
    assert info.value is one
    with pytest.raises(TieErrors) as info:
        raise_all([one, TieError("two")])
    assert [e.message for e in info.value.errors] == ["one", "two"]


def test_did_you_mean():
    assert did_you_mean("fc", ["fc1", "head"]) == "did you mean 'fc1'?"
    assert did_you_mean("zzz", ["fc1", "head"]) is None


# ----------------------------------------------------------------------------- --set


def deep(d: int, depth: int) -> tuple[int, int]:
    """(logical, unique) parameters of Deep and DeepShared, by the formula in the docstring."""
    block, head = 8 * d * d + 7 * d, 10 * d + 10
    return depth * block + head, block + head


def stats(capsys, *args: str) -> dict:
    assert main(["stats", str(DEEP), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_formula_matches_the_defaults(capsys):
    out = stats(capsys)
    logical, shared_unique = deep(128, 6)
    assert out["models"]["Deep"]["logical_params"] == out["models"]["Deep"]["unique_params"] == logical == 793_098
    assert out["models"]["DeepShared"]["unique_params"] == shared_unique == 133_258


def test_set_changes_counts_through_the_executable():
    exe = Path(sys.executable).with_name("tiec")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tiec"]
    result = subprocess.run(cmd + ["stats", str(DEEP), "--json", "--set", "d=64"],
                            check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    logical, shared_unique = deep(64, 6)  # 199_946 and 33_866
    assert out["models"]["Deep"]["logical_params"] == logical == 199_946
    assert out["models"]["DeepShared"]["logical_params"] == logical
    assert out["models"]["DeepShared"]["unique_params"] == shared_unique == 33_866
    assert out["program"]["unique_params"] == logical + shared_unique
    assert out["models"]["Deep"]["inputs"] == {"x": "f32[B, 64]"}


def test_set_several_parameters(capsys):
    out = stats(capsys, "--set", "d=16", "--set", "depth=2")
    logical, shared_unique = deep(16, 2)
    assert out["models"]["Deep"]["logical_params"] == logical == 2 * (2048 + 112) + 170
    assert out["models"]["Deep"]["layers"] == 2 * 3 + 1
    assert out["models"]["DeepShared"]["unique_params"] == shared_unique
    assert out["models"]["DeepShared"]["logical_bytes"] == 4 * logical


def test_set_unknown_parameter(capsys):
    assert main(["stats", str(DEEP), "--set", "dd=64"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"{DEEP}: error: --set dd: no model has a parameter 'dd'",
                                         "    hint: did you mean 'd'?"]


def test_set_unknown_parameter_lists_the_known_ones(capsys):
    assert main(["check", str(DEEP), "--set", "qqq=3"]) == 1
    assert "hint: parameters: d, depth" in capsys.readouterr().err


def test_set_value_is_checked_where_it_is_used(capsys):
    assert main(["check", str(DEEP), "--set", "depth=0"]) == 1
    err = capsys.readouterr().err
    assert f"{DEEP}:13:12: error: repeat count must be at least 1, got 0" in err
    assert f"{DEEP}:23:12: error: repeat count must be at least 1, got 0" in err  # both models


@pytest.mark.parametrize("bad", ["d", "d=", "d=abc", "=3"])
def test_set_malformed_is_a_usage_error(bad: str, capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", str(DEEP), "--set", bad])
    assert info.value.code == 2
    assert "--set" in capsys.readouterr().err
