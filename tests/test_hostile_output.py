"""`-o` never replaces what it must not (`tiec.output`, shared by `compile` and `export`).

A read-only file or a folder is refused; a symlink's target is replaced and the link kept; a
character device, a FIFO and a shell redirection reached through `/dev/stdout` are written in
place; a replaced file keeps its mode bits; and a failure leaves neither a partial file nor a
temporary behind. The tests run as root too, where `os.access` calls every file writable, and
never touch the machine's own `/dev/null` when they could destroy it.
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

import tiec
from tiec import cli, output

SPEC = "model M {\n    in x: [B, 4]\n    enc = Linear(4, 3)\n    return relu(enc(x))\n}\n"
COMMANDS = ("compile", "export")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "m.tie"
    path.write_text(SPEC)
    return path


def _run(command: str, spec: Path, out, capsys, *extra: str) -> tuple[int, str]:
    status = cli.main([command, str(spec), "-o", str(out), *extra])
    return status, capsys.readouterr().err


def _expected_bytes(spec: Path, tmp_path: Path, command: str) -> bytes:
    """What `command` writes to an ordinary new file (both outputs are deterministic)."""
    reference = tmp_path / "reference" / f"m.{'py' if command == 'compile' else 'onnx'}"
    reference.parent.mkdir(exist_ok=True)
    assert cli.main([command, str(spec), "-o", str(reference)]) == 0
    return reference.read_bytes()


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- refused


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_file_is_refused_even_for_root(command, spec, tmp_path, capsys):
    out = tmp_path / "ro.out"
    out.write_text("keep me")
    out.chmod(0o444)
    assert _run(command, spec, out, capsys) == (1, f"{out}: error: cannot write {out}: the file is read-only\n")
    assert out.read_text() == "keep me" and stat.S_IMODE(out.stat().st_mode) == 0o444
    assert _left(tmp_path) == ["m.tie", "ro.out"]


def test_the_output_is_checked_before_the_spec_is_compiled(tmp_path, capsys):
    bad = tmp_path / "bad.tie"
    bad.write_text("model M {\n")
    out = tmp_path / "ro.py"
    out.write_text("")
    out.chmod(0o400)
    assert _run("compile", bad, out, capsys) == (1, f"{out}: error: cannot write {out}: the file is read-only\n")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_is_refused(command, spec, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    assert _run(command, spec, folder, capsys) == (1, f"{folder}: error: cannot write {folder}: it is a folder\n")
    assert _left(folder) == []


def test_a_socket_is_refused(spec, capsys):
    with tempfile.TemporaryDirectory(dir="/tmp" if os.path.isdir("/tmp") else None) as short:  # AF_UNIX: ~100 chars
        path = os.path.join(short, "s")
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(path)
            assert _run("export", spec, path, capsys) == (
                1, f"{path}: error: cannot write {path}: it is not a regular file, a character device or a FIFO\n")
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
        finally:
            sock.close()


def test_a_missing_folder_is_refused(spec, tmp_path, capsys):
    out = tmp_path / "no" / "m.onnx"
    assert _run("export", spec, out, capsys) == (1, f"{out}: error: cannot write {out}: folder {out.parent} does not exist\n")


@pytest.mark.parametrize(("command", "which"), [("compile", "spec"), ("export", "spec"), ("export", "weights")])
def test_an_input_is_never_the_output(command, which, spec, tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save(tiec.load(spec).torch("M").state_dict(), weights)
    before = weights.read_bytes()
    out = spec if which == "spec" else weights
    extra = ("--weights", str(weights)) if command == "export" else ()
    given = str(spec) if which == "spec" else str(weights)
    assert _run(command, spec, out, capsys, *extra) == (1, f"{out}: error: cannot write {out}: it is the input file {given}\n")
    assert spec.read_text() == SPEC and weights.read_bytes() == before


def test_the_api_refuses_too(spec, tmp_path):
    out = tmp_path / "ro.onnx"
    out.write_bytes(b"")
    out.chmod(0o444)
    with pytest.raises(tiec.TieError) as info:
        tiec.load(spec).onnx(out)
    assert info.value.render() == f"{out}: error: cannot write {out}: the file is read-only"


# ----------------------------------------------------------------------------- replaced


@pytest.mark.parametrize("command", COMMANDS)
def test_a_symlink_keeps_pointing_at_its_replaced_target(command, spec, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "real.out"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.out"
    link.symlink_to(target)
    assert _run(command, spec, link, capsys)[0] == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == _expected_bytes(spec, tmp_path, command)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _left(elsewhere) == ["real.out"]  # the temporary lived beside the target and is gone


def test_a_dangling_symlink_creates_its_target(spec, tmp_path, capsys):
    link = tmp_path / "link.py"
    link.symlink_to(tmp_path / "made.py")
    assert _run("compile", spec, link, capsys)[0] == 0
    assert link.is_symlink() and (tmp_path / "made.py").read_bytes() == _expected_bytes(spec, tmp_path, "compile")


def test_a_dangling_symlink_into_a_missing_folder(spec, tmp_path, capsys):
    link = tmp_path / "link.py"
    link.symlink_to(tmp_path / "gone" / "made.py")
    assert _run("compile", spec, link, capsys) == (
        1, f"{link}: error: cannot write {link}: folder {tmp_path / 'gone'} does not exist\n")


@pytest.mark.parametrize("mode", [0o600, 0o755])
def test_a_replaced_file_keeps_its_mode(mode, spec, tmp_path, capsys):
    out = tmp_path / "m.py"
    out.write_text("old")
    out.chmod(mode)
    assert _run("compile", spec, out, capsys)[0] == 0
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert out.read_bytes() == _expected_bytes(spec, tmp_path, "compile")


def test_a_failed_replacement_changes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(tiec.TieError) as info:
        output.write_output(out, b"new")
    assert info.value.render() == f"{out}: error: cannot write {out}: No space left on device"
    assert out.read_bytes() == b"previous" and _left(tmp_path) == ["m.onnx"]


def test_compile_and_export_share_one_writer():
    from tiec.backends.onnx import emit

    assert emit.write_output is output.write_output is cli.write_output
    assert not hasattr(emit, "write_atomic") and not hasattr(cli, "_write_atomic")


# ----------------------------------------------------------------------------- written in place


@pytest.fixture
def char_device(tmp_path) -> Path:
    """A character device that is safe to lose: a private /dev/null node, or (when no node can
    be made) the real /dev/null if this process could not delete it anyway."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        return node
    except (OSError, AttributeError):
        if os.path.exists("/dev/null") and not os.access("/dev", os.W_OK):
            return Path("/dev/null")
    pytest.skip("cannot make a character device here, and replacing /dev/null would be destructive")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_character_device_is_written_not_replaced(command, char_device, spec, capsys):
    before = os.stat(char_device)
    status, err = _run(command, spec, char_device, capsys)
    assert (status, err) == (0, "")
    after = os.stat(char_device)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_fifo_is_written_not_replaced(command, spec, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    status = cli.main([command, str(spec), "-o", str(fifo)])
    reader.join(timeout=30)
    assert status == 0 and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received == [_expected_bytes(spec, tmp_path, command)]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc's descriptor links")
@pytest.mark.parametrize("link", ["/dev/stdout", "/dev/fd/1"])
def test_a_redirection_through_dev_stdout_is_written_in_place(link, spec, tmp_path):
    appended = tmp_path / "log.py"
    appended.write_text("# kept\n")
    with open(appended, "a") as f:  # `tiec compile m.tie -o /dev/stdout >> log.py`
        r = subprocess.run([sys.executable, "-m", "tiec", "compile", str(spec), "-o", link], stdout=f,
                           stderr=subprocess.PIPE, text=True, check=False, timeout=120, cwd=ROOT)
    assert (r.returncode, r.stderr) == (0, "")
    source = _expected_bytes(spec, tmp_path, "compile").decode()
    assert appended.read_text() == "# kept\n" + source
    piped = subprocess.run([sys.executable, "-m", "tiec", "compile", str(spec), "-o", link], capture_output=True,
                           text=True, check=False, timeout=120, cwd=ROOT)
    assert (piped.returncode, piped.stdout) == (0, source)
