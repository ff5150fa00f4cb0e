"""Golden files: the emitted Python of every example and the ONNX text (`onnx.printer`) of a few
models, compared with `tests/golden/`. Refresh them, after checking the diff, with
`pytest tests/test_golden.py --update-golden` (or `TIEC_UPDATE_GOLDEN=1`).

Large examples are compiled at small sizes so the files stay short (their text depends on the
number of layers, not their width); ONNX parameter initializers are printed without their data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx.printer
import pytest
from tiec.backends.onnx import build
from tiec.compiler import ir as tir

import tiec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.tie"))
SMALL_BERT = {"vocab": 50, "e": 8, "d": 16, "heads": 2, "ffn": 32, "layers": 2, "max_len": 16}
OVERRIDES = {
    "albert": SMALL_BERT,
    "bert": SMALL_BERT,
    "gpt2_small": {"vocab": 50, "context": 16, "d": 16, "heads": 2, "layers": 2},
}
ONNX_MODELS = [("tied_autoencoder", "TiedAutoencoder"), ("siamese", "Siamese"), ("tied_lm", "TiedLM"),
               ("gpt2_small", "GPT2Small")]


def compiled(example: str) -> tiec.Program:
    """The example, named by its path from the repository root so the text is the same anywhere."""
    path = f"examples/{example}.tie"
    return tiec.loads((ROOT / path).read_text(encoding="utf-8"), OVERRIDES.get(example), filename=path)


def onnx_text(program: tiec.Program, model: str) -> str:
    """`onnx.printer` text of the model, its parameter initializers emptied (names, dtypes and dims
    stay; the small `~n` constants keep their values)."""
    binds = tir.bindings(program.ir, model)
    zeros = {p.name: np.zeros(p.shape, np.float32) for p in program.ir.models[model].params
             if binds[p.name].canonical == p.name}
    proto, _ = build(program.ir, model, zeros)
    for t in proto.graph.initializer:
        if not t.name.startswith("~"):
            t.ClearField("raw_data")
    return onnx.printer.to_text(proto) + "\n"


@pytest.mark.parametrize("example", EXAMPLES)
def test_emitted_python(example, golden):
    golden(f"{example}.py.txt", compiled(example).python())


@pytest.mark.parametrize("example, model", ONNX_MODELS, ids=[e for e, _ in ONNX_MODELS])
def test_onnx_text(example, model, golden):
    golden(f"{example}.onnx.txt", onnx_text(compiled(example), model))
