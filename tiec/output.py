"""Output files (`tiec compile -o`, `tiec export -o`, `Program.onnx`): complete or absent, and never
replacing what they must not.

Rule, as compilers and `cp` treat their output:
- a new file, or an existing regular file, is written to a temporary file in the same folder and
  moved into place with `os.replace`, so a failure leaves no partial file and a reader never sees
  one; a new file gets `0o666 & ~umask`, a replaced one keeps its permission bits;
- a symlink is followed: its target is replaced that way, and the link stays a link;
- a character device or a FIFO (`/dev/null`, a terminal, a pipe), and any file reached through a
  descriptor's link (`/dev/stdout`, `/dev/fd/N`), is opened and written, never replaced
  (replacing `/dev/null` would delete the device);
- a read-only file, a folder, and any other kind of file (a block device, a socket) are refused.
Every refusal and I/O failure is a `TieError` naming the output, with no line.

A file written with companions beside it (an ONNX model and its external data: `written_together`)
follows the same rule for each, and they appear together: all are written in a temporary folder
beside the first and moved into place only when every one is complete; a failure leaves none.
They must be regular files (new or existing): a device or a FIFO cannot hold a companion.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator

from tiec.dsl.diagnostics import Source, Span, TieError


def check_output(path: str | os.PathLike) -> None:
    """Raise the `TieError` that writing `path` would raise for what is there now (its folder,
    its kind, its permissions), so a command can fail before doing the work."""
    _target(os.fspath(path))


def write_output(path: str | os.PathLike, data: bytes | str | Iterable[bytes | memoryview]) -> None:
    """Write `data` (a str is encoded as UTF-8; an iterable of byte chunks is written in order, as
    it is produced) to `path` by the rule in the module docstring.

    Raises:
        TieError: `path` must not or cannot be written; nothing was changed.
    """
    path = os.fspath(path)
    if isinstance(data, str):
        raw: Iterable = (data.encode("utf-8"),)
    else:
        raw = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    target, st, stream = _target(path)
    try:
        if stream:
            _stream(target, raw)
        else:
            _replace(target, raw, st.st_mode & 0o777 if st is not None else 0o666 & ~_umask())
    except OSError as e:
        raise _error(path, e.strerror or str(e)) from None


@contextlib.contextmanager
def written_together(path: str | os.PathLike, companions: tuple[str, ...]) -> Iterator[tuple[str, list[str]]]:
    """Write `path` and the files named `companions` in its folder as one (module docstring):
    yields the temporary paths to write them at (`path`'s, then each companion's), with those
    names, in one temporary folder; when the block ends without an error they replace their
    targets (companions first, so a reader never finds the file without them), else the folder
    is removed.

    Raises:
        TieError: one of the files must not or cannot be written; nothing was changed.
    """
    path = os.fspath(path)
    target, st, stream = _target(path)
    if stream:
        raise _error(path, "it is not a regular file, and the files written beside it need one")
    folder = os.path.dirname(target)
    others = [os.path.join(folder, name) for name in companions]  # beside the file a link leads to
    places = []
    for other in others:
        t, s, streamed = _target(other)
        if streamed:
            raise _error(other, "it is not a regular file")
        places.append((t, s))
    try:
        tmp = tempfile.mkdtemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    except OSError as e:
        raise _error(path, e.strerror or str(e)) from None
    try:
        inner = [os.path.join(tmp, os.path.basename(target))] + [os.path.join(tmp, n) for n in companions]
        yield inner[0], inner[1:]
        for (t, s), written in [*zip(places, inner[1:]), ((target, st), inner[0])]:
            os.chmod(written, s.st_mode & 0o777 if s is not None else 0o666 & ~_umask())
            with open(written, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(written, t)
    except OSError as e:
        raise _error(path, e.strerror or str(e)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _target(path: str) -> tuple[str, os.stat_result | None, bool]:
    """The file to write, its status (None: it does not exist yet), and whether to write it in
    place (a stream) rather than replace it."""
    try:
        st = os.stat(path)  # through every link, /proc's descriptor links too
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _error(path, e.strerror or str(e)) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise _error(path, "it is a folder")
    if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode) or _descriptor(path)):
        return path, st, True
    target = os.path.realpath(path)
    if st is None:
        folder = os.path.dirname(target)
        if not os.path.isdir(folder):  # for a dangling symlink, the folder its target would be in
            shown = folder if os.path.islink(path) else os.path.dirname(path) or "."
            raise _error(path, f"folder {shown} does not exist")
        return target, None, False
    if not stat.S_ISREG(st.st_mode):
        raise _error(path, "it is not a regular file, a character device or a FIFO")
    # Replacing needs only a writable folder, so the file's own permission is checked here, from
    # its mode bits too: for root, os.access says every file is writable.
    if not st.st_mode & 0o222 or not os.access(target, os.W_OK):
        raise _error(path, "the file is read-only")
    return target, st, False


_DESCRIPTORS = re.compile(r"/proc/[^/]+/fd")


def _descriptor(path: str) -> bool:
    """Whether `path` leads through an open descriptor's link (`/dev/stdout`, `/dev/fd/1`,
    `/proc/self/fd/1`): its file is the shell's redirection (`> out.py`, `>> log`), to be written
    where the descriptor points, not replaced by a new file the descriptor never sees."""
    p = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed in one path
        if _DESCRIPTORS.fullmatch(os.path.realpath(os.path.dirname(p))):
            return True
        if not os.path.islink(p):
            return False
        p = os.path.join(os.path.dirname(p), os.readlink(p))
    return False


def _stream(path: str, data: Iterable[bytes | memoryview]) -> None:
    # No O_CREAT: if it vanished, fail rather than make a file. O_APPEND: a file behind
    # `/dev/stdout` is written after what the redirection holds (nothing, for `>`); a device or a
    # FIFO has no end to append to.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    with os.fdopen(fd, "wb") as f:
        for chunk in data:
            f.write(chunk)


def _replace(target: str, data: Iterable[bytes | memoryview], mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, mode)  # mkstemp makes the file 0600
            for chunk in data:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _error(path: str, why: str) -> TieError:
    return TieError(f"cannot write {path}: {why}", Span(Source(path, ""), 0, 0, 0, 0))
