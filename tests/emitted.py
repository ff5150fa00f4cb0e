"""Importing emitted PyTorch source as a real module file, as a user of `tiec compile` would."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def load_emitted(src: str, tmp_path: Path, name: str):
    """`src` written to `<tmp_path>/<name>.py` and imported from there."""
    path = tmp_path / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"emitted_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
