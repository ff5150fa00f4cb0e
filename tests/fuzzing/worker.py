"""The child process that runs fuzz inputs under limits, and the parent's handle on it (`Worker`).

The child imports tiec, torch, onnx and onnxruntime once, then caps its address space
(`RLIMIT_AS`: what the imports took plus a budget, 2 GiB by default) and serves requests, one
JSON line each on stdin, one JSON line of `Outcome` back. The parent waits a bounded time for
each answer: no answer in time is a hang, an answer that never comes is a crash; either way the
child is replaced and the input is a bad outcome. What is checked per input is in `checks.py`.
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    """`kind`: "ok", "diagnostic" (a located `TieError`) or "bad"; for a bad one, `cls` names the
    class (an exception type, "unlocated", "cli", "differential", "timeout", "crash", "memory")."""

    kind: str
    cls: str = ""
    detail: str = ""

    @property
    def bad(self) -> bool:
        return self.kind == "bad"


class Worker:
    """A child process running requests; replaced after a hang or a crash. Use it within
    `contextlib.closing`.

    Args:
        timeout: seconds one input may take.
        memory_gib: address space the child may add to what its imports took.
    """

    def __init__(self, timeout: float = 20.0, memory_gib: float = 2.0, light: bool = False):
        self.timeout, self.memory_gib, self.light = timeout, memory_gib, light
        self.proc: subprocess.Popen | None = None
        self.restarts = -1

    def _start(self) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - the child's stderr, kept while it lives
        self.dir = tempfile.mkdtemp(prefix="tiec-fuzz-")  # the child's working folder, removed with it
        cmd = [sys.executable, "-m", "tests.fuzzing.worker", "--serve", f"--memory-gib={self.memory_gib}",
               f"--dir={self.dir}"]
        cmd += ["--light"] if self.light else []
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.restarts += 1
        if self._read(300.0) != {"ready": True}:
            raise RuntimeError(f"the fuzz worker did not start:\n{self._log_tail()}")

    def _read(self, timeout: float) -> dict | None:
        """The next JSON line from the child, or None if none comes within `timeout` seconds."""
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-2000:]

    def run(self, mode: str, text: str = "", expect: dict | None = None) -> Outcome:
        """Run one request ("examine" a text, or "differential" with `expect`; see `checks.py`), or
        a probe that misbehaves on purpose ("probe-hang", "-crash", "-memory", "-raise")."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        start, answer = time.monotonic(), None
        try:
            self.proc.stdin.write((json.dumps({"mode": mode, "text": text, "expect": expect}) + "\n").encode())
            self.proc.stdin.flush()
            answer = self._read(self.timeout)
        except BrokenPipeError:  # it died before reading the request
            pass
        if answer is not None:
            if answer["cls"] == "memory":  # the child exits after one: start the next request afresh
                self.kill()
            return Outcome(**answer)
        hung = self.proc.poll() is None and time.monotonic() - start >= self.timeout
        if not hung:
            self.proc.wait()
        tail = self._log_tail()
        self.kill()
        if hung:
            return Outcome("bad", "timeout", f"no answer within {self.timeout:g} s")
        code = self.proc.returncode
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return Outcome("bad", "crash", f"the worker died ({why}):\n{tail}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def _probe(mode: str) -> Outcome:
    if mode == "probe-hang":
        time.sleep(3600)
    elif mode == "probe-crash":
        os.abort()
    elif mode == "probe-memory":
        try:
            _ = bytearray(64 * 2**30)
        except MemoryError:
            return Outcome("bad", "memory", "64 GiB")
    return Outcome("bad", "KeyError", mode)


def _serve(memory_gib: float, light: bool, folder: str) -> None:
    """The child's loop. `light`: serve probes only, without importing the compiler (for tests of
    the harness itself, which restart the child often)."""
    import resource

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (and onnxruntime's) go to the log, not into the protocol
    os.chdir(folder)  # so diagnostics name the plain file `fuzz.tie`
    if not light:
        from . import checks  # the heavy imports, before the limit

        checks.warm_up()
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (base + int(memory_gib * 2**30), resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash is reported, not dumped (which takes a while)
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        probe = request["mode"].startswith("probe-")
        outcome = _probe(request["mode"]) if probe else checks.handle(request)
        protocol.write(json.dumps(asdict(outcome)) + "\n")
        if outcome.cls == "memory":  # the heap may be in any state now: start afresh
            os._exit(0)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        options = dict(a.removeprefix("--").split("=", 1) for a in sys.argv if "=" in a)
        _serve(float(options["memory-gib"]), "--light" in sys.argv, options["dir"])
