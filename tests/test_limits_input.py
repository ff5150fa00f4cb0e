"""Input files at their limits: bytes that are not UTF-8, files too large to be a spec, and
diagnostics by the thousand.

A bad byte is reported where the lexer would have put it (line and column in characters, after
any byte-order mark), with the line quoted; the file's size is capped before it is read, so an
endless file (`/dev/zero`) is an error rather than an exhausted memory; and quoting a source line
splits the file once, not once per diagnostic.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiec.dsl.diagnostics import Source, Span, TieError, TieWarning

from tiec import api, cli

ROOT = Path(__file__).resolve().parent.parent
SPEC = "model M {\n    in x: [B, 2]\n    return relu(x)\n}\n"


def _check(path: Path, capsys) -> str:
    assert cli.main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


# ----------------------------------------------------------------------------- not UTF-8


def test_a_bad_byte_is_located_by_line_and_character_column(tmp_path, capsys):
    path = tmp_path / "latin.tie"
    # line 3: a tab, two spaces, "y = ", then Latin-1 'é' (0xe9); "é" earlier on line 2 is UTF-8
    path.write_bytes(b"model M {\n  # caf\xc3\xa9\n\t  y = \xe9t\xe9\n}\n")
    assert _check(path, capsys) == (
        f"{path}:3:8: error: the file is not UTF-8 text (byte 27 is 0xe9)\n"
        "    \t  y = \ufffdt\ufffd\n"
        "    \t      ^\n"
        "    hint: save it as UTF-8\n")


def test_a_byte_order_mark_counts_in_the_byte_offset_but_not_the_column(tmp_path, capsys):
    path = tmp_path / "bom.tie"
    path.write_bytes(b"\xef\xbb\xbfmodel M {\xff\n}\n")
    assert _check(path, capsys).splitlines()[:3] == [
        f"{path}:1:10: error: the file is not UTF-8 text (byte 12 is 0xff)",
        "    model M {\ufffd",
        "             ^"]


def test_a_truncated_character_at_the_end_is_located(tmp_path, capsys):
    path = tmp_path / "cut.tie"
    path.write_bytes(b"model M {\r\n}\r\n\xc3")  # CRLF lines: the column ignores the '\r'
    assert _check(path, capsys).splitlines()[0] == f"{path}:3:1: error: the file is not UTF-8 text (byte 14 is 0xc3)"


# ----------------------------------------------------------------------------- size


def test_the_size_limit_is_16_mib():
    assert api.MAX_SOURCE_BYTES == 16 * 2**20


def test_a_file_over_the_limit_is_refused_before_compiling(tmp_path, capsys):
    path = tmp_path / "huge.tie"
    with open(path, "wb") as f:
        f.truncate(api.MAX_SOURCE_BYTES + 1)  # sparse: no disk space, all zero bytes
    assert _check(path, capsys) == f"{path}: error: cannot read {path}: it is larger than 16 MiB, the limit for a .tie file\n"


def test_a_file_at_the_limit_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(api, "MAX_SOURCE_BYTES", len(SPEC.encode()))
    path = tmp_path / "m.tie"
    path.write_text(SPEC)
    assert cli.main(["check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok: ")
    path.write_text(SPEC + " ")
    assert _check(path, capsys).startswith(f"{path}: error: cannot read {path}: it is larger than ")


@pytest.mark.skipif(not os.path.exists("/dev/zero") or sys.platform != "linux", reason="needs Linux's /dev/zero")
def test_an_endless_file_is_an_error_not_a_memory_error():
    # The address space is capped at 1 GiB, so reading /dev/zero to the end would fail fast with
    # MemoryError (an internal error) instead of exhausting the machine.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
            "from tiec.cli import main; sys.exit(main(['check', '/dev/zero']))")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "/dev/zero: error: cannot read /dev/zero: it is larger than 16 MiB, the limit for a .tie file\n"


# ----------------------------------------------------------------------------- many diagnostics


class _CountingText(str):
    """Source text that counts how often it is split into lines."""

    splits = 0

    def split(self, *args, **kwargs):
        type(self).splits += 1
        return super().split(*args, **kwargs)


def test_quoting_lines_splits_the_source_once(monkeypatch):
    monkeypatch.setattr(_CountingText, "splits", 0)
    text = _CountingText("".join(f"    l{i} = Linear(2, 2)\n" for i in range(500)))
    src = Source("m.tie", text)
    rendered = [TieWarning(f"layer 'l{i}' is declared but never used", Span(src, i + 1, 5, i + 1, 8)).render()
                for i in range(500)]
    assert rendered[499].splitlines()[1:] == ["        l499 = Linear(2, 2)", "        ^^^"]
    assert _CountingText.splits == 1
    assert src.lines is src.lines


def test_lines_are_counted_as_the_lexer_counts_them():
    src = Source("m.tie", "a\fb\u2028c\r\nd\n")
    assert src.lines == ("a\fb\u2028c\r", "d", "")
    assert [src.line(n) for n in (0, 1, 2, 3, 4)] == ["", "a\fb\u2028c", "d", "", ""]


def test_every_warning_of_a_compile_quotes_one_shared_source(tmp_path):
    body = "".join(f"    l{i} = Linear(2, 2)\n" for i in range(300))
    path = tmp_path / "many.tie"
    path.write_text(f"model M {{\n    in x: [B, 2]\n{body}    return relu(x)\n}}\n")
    warnings = api.load(path).warnings
    assert len(warnings) == 300
    assert len({id(w.span.source) for w in warnings}) == 1
    assert warnings[-1].render() == (f"{path}:302:5: warning: layer 'l299' is declared but never used\n"
                                     "        l299 = Linear(2, 2)\n"
                                     "        ^^^^^^^^^^^^^^^^^^^")


def test_errors_render_the_same_after_caching():
    src = Source("m.tie", "model M {\n    h = relu(xx)\n}\n")
    e = TieError("unknown name 'xx'", Span(src, 2, 14, 2, 16))
    assert e.render() == e.render() == "m.tie:2:14: error: unknown name 'xx'\n        h = relu(xx)\n                 ^^"
