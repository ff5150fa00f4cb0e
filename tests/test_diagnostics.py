"""The bad-input corpus (`tests/fixtures/bad/*.tie`) through the `tiec` command.

Each fixture starts with its expectations, one comment line per error it must report, then an
optional hint (a substring of the first error's hint line):

    # expect: 6:12: unknown function or layer 'fc'
    # hint: did you mean 'fc1'?

For every fixture, `tiec check FILE` and `tiec export FILE -o TMP/x.onnx` must exit with status 1
and print, for each expectation, `FILE:LINE:COL: error: …` containing the message, followed by
the source line and a caret under the column; no traceback, no output file, and exactly as many
errors as expected. Every fixture runs through `tiec.cli.main` in-process (milliseconds each);
a sample also runs through the installed `tiec` executable in a subprocess, and setting
`TIEC_CLI_ALL=1` runs the whole corpus that way (about half a second per process).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tiec.cli import main

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((ROOT / "tests" / "fixtures" / "bad").glob("*.tie"))
SAMPLE = {"syntax_unclosed_paren.tie", "share_shape.tie", "several_errors.tie", "tie_negative.tie"}
SUBPROCESS = [p for p in BAD if p.name in SAMPLE or os.environ.get("TIEC_CLI_ALL") == "1"]
COMMANDS = ("check", "export")
_EXPECT = re.compile(r"# expect: (\d+):(\d+): (.+)")


def expectations(path: Path) -> tuple[list[tuple[int, int, str]], str | None]:
    """The `# expect:` lines at the top of a fixture, and its `# hint:` if any."""
    expected, hint = [], None
    for line in path.read_text().splitlines():
        m = _EXPECT.fullmatch(line)
        if m:
            expected.append((int(m[1]), int(m[2]), m[3]))
        elif line.startswith("# hint: "):
            hint = line[len("# hint: "):]
        else:
            break
    return expected, hint


def argv(command: str, path: Path, out: Path) -> list[str]:
    return [command, str(path)] + (["-o", str(out)] if command == "export" else [])


def check_report(path: Path, status: int, stderr: str, out_dir: Path) -> None:
    """Everything a failed run must show (see the module docstring)."""
    expected, hint = expectations(path)
    assert status == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    source = path.read_text().splitlines()
    for line, col, message in expected:
        head = f"{path}:{line}:{col}: error: "
        at = [i for i, text in enumerate(lines) if text.startswith(head) and message in text]
        assert at, f"no '{head}…{message}' in:\n{stderr}"
        excerpt, caret = lines[at[0] + 1], lines[at[0] + 2]
        assert excerpt == "    " + source[line - 1]
        assert re.fullmatch(r" *\^+", caret) and caret.index("^") == 4 + col - 1, caret
    assert stderr.count(": error: ") == len(expected), stderr
    if hint is not None:
        assert any(text.startswith("    hint: ") and hint in text for text in lines), stderr
    assert list(out_dir.iterdir()) == []  # no output file, not even a temporary one


def test_corpus_size():
    assert len(BAD) >= 30
    for path in BAD:
        expected, _ = expectations(path)
        assert expected, f"{path.name} has no '# expect:' line"
        first = path.read_text().splitlines()[0]
        assert first.startswith("# expect: ")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_input_in_process(path: Path, command: str, tmp_path: Path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    status = main(argv(command, path, out_dir / "x.onnx"))
    captured = capsys.readouterr()
    assert captured.out == ""
    check_report(path, status, captured.err, out_dir)


def _tiec() -> list[str]:
    exe = Path(sys.executable).with_name("tiec")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tiec"]


@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory) -> dict:
    """Run every (fixture, command) pair of `SUBPROCESS` at once; results by (name, command)."""
    jobs = {}
    for path in SUBPROCESS:
        for command in COMMANDS:
            out_dir = tmp_path_factory.mktemp(f"{path.stem}_{command}")
            jobs[path.name, command] = (out_dir, _tiec() + argv(command, path, out_dir / "x.onnx"))

    def run(job):
        return subprocess.run(job[1], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = dict(zip(jobs, pool.map(run, jobs.values())))
    return {key: (jobs[key][0], result) for key, result in results.items()}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("path", SUBPROCESS, ids=lambda p: p.stem)
def test_bad_input_through_the_executable(path: Path, command: str, subprocess_runs):
    out_dir, result = subprocess_runs[path.name, command]
    assert result.stdout == ""
    check_report(path, result.returncode, result.stderr, out_dir)


# ----------------------------------------------------------------------------- other failures


def test_missing_file(tmp_path: Path, capsys):
    missing = tmp_path / "nope.tie"
    assert main(["check", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{missing}: error: cannot read {missing}")
    assert "Traceback" not in err


def test_empty_file(tmp_path: Path, capsys):
    empty = tmp_path / "empty.tie"
    empty.write_text("# only a comment\n")
    assert main(["check", str(empty)]) == 1
    err = capsys.readouterr().err
    assert f"{empty}:1:1: error: no model defined" in err and "hint: add: model Name" in err


def test_compile_leaves_no_file_on_error(tmp_path: Path, capsys):
    out = tmp_path / "model.py"
    assert main(["compile", str(BAD[0]), "-o", str(out)]) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert ": error: " in capsys.readouterr().err


def test_warnings_do_not_fail_check(capsys):
    path = ROOT / "tests" / "fixtures" / "good" / "warnings.tie"
    assert main(["check", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{path}: ok: 1 model(s) (Warns), 2 share group(s), 1 tie(s)")
    assert captured.err.count(": warning: ") == 2 and ": error: " not in captured.err


def test_lark_errors_never_escape():
    from tiec.dsl import TieError, parse

    for text in ("}{", "model", "model M {", "model M { in x: [B, 4]\n return x @ }", "share a", "tie(1) a, b(",
                 "model M(a = ) {}", "block B { in x: ] }", "\x00", "model M { return 'x' }"):
        with pytest.raises(TieError) as info:
            parse(text, "t.tie")
        assert info.value.render().startswith("t.tie:")


def test_syntax_errors_name_expected_tokens_by_their_text():
    from tiec.dsl import TieError, parse

    with pytest.raises(TieError) as info:
        parse("model M {\n  in x: [B]\n  h = = x\n  return h\n}\n", "t.tie")
    assert info.value.message == "unexpected '='; expected '(', '-', '[', a name, a number, a string"
    assert (info.value.span.line, info.value.span.col) == (3, 7)
