"""Shared pytest set-up: the `--update-golden` flag and the `golden` fixture that compares text
with `tests/golden/<name>` (or, with the flag or `TIEC_UPDATE_GOLDEN=1`, rewrites it)."""
from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "distributed: spawns two gloo processes on 127.0.0.1 (tests/test_distributed.py)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from the current output instead of comparing with it")


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """`golden(name, text)`: fail with a unified diff unless `text` equals `tests/golden/<name>`."""
    update = request.config.getoption("--update-golden") or os.environ.get("TIEC_UPDATE_GOLDEN") == "1"

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.parent.mkdir(exist_ok=True)
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(f"no golden file {path}; create it with `pytest --update-golden`", pytrace=False)
        want = path.read_text(encoding="utf-8")
        if text != want:
            diff = difflib.unified_diff(want.splitlines(keepends=True), text.splitlines(keepends=True),
                                        fromfile=f"tests/golden/{name}", tofile="current output")
            pytest.fail("".join(diff) + "\nif the change is intended: pytest --update-golden (or TIEC_UPDATE_GOLDEN=1)",
                        pytrace=False)

    return check
