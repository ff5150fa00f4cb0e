"""Downstream ONNX tools keep tiec's files deduplicated.

Every example model (and GPT-2 / ALBERT layouts big enough for the weights to dominate the file)
is exported with random weights and run through onnxsim, onnxslim, onnxoptimizer (default passes)
and onnxruntime's graph optimizer at each level (the optimized model it saves). After each tool:
every share group is still one initializer (one tensor holds each canonical parameter's values, in
any layout: onnxruntime's NCHWc pass reorders convolution weights), nothing else is bigger than a
shape constant, and onnxruntime's outputs of the processed file match the hand-written PyTorch
reference holding the same weights (rtol 1e-3, atol 1e-5). The big layouts also keep the file
within 1.001 × the unique parameter bytes. Folding a `Transpose(initializer)` would fail all three.
"""
from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from tiec.backends.onnx import build

import tiec
from tests import references as R
from tests.test_examples import CASES, EX, Case, toks

MEDIUM_BERT = {"vocab": 32000, "e": 128, "d": 128, "heads": 2, "ffn": 256, "layers": 2, "max_len": 64}
MEDIUM_GPT2 = {"vocab": 32000, "context": 64, "d": 128, "heads": 2, "layers": 2}
# ~17 MB of weights each, so the file ratio measures what is stored more than the graph (5–12 kB
# after a tool: onnxsim and onnxslim add a value_info per tensor).
BIG = [Case("albert", "Albert", lambda: R.Albert(**MEDIUM_BERT), toks(32000), MEDIUM_BERT),
       Case("gpt2_small", "GPT2Small", lambda: R.GPT2(**MEDIUM_GPT2), toks(32000), MEDIUM_GPT2)]
FILE_RATIO = 1.001
SHAPE_CONSTANT = 64  # elements: the most a tool's own constant (a shape, a scalar) may hold


def _onnxsim(model: onnx.ModelProto, tmp: Path) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    assert ok, "onnxsim's own check of the simplified model failed"
    return simplified


def _onnxslim(model: onnx.ModelProto, tmp: Path) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def _onnxoptimizer(model: onnx.ModelProto, tmp: Path) -> onnx.ModelProto:
    import onnxoptimizer

    return onnxoptimizer.optimize(model)


def _onnxruntime(level: str):
    def run(model: onnx.ModelProto, tmp: Path) -> onnx.ModelProto:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
        options.optimized_model_filepath = str(tmp / f"ort_{level.lower()}.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)

    return run


TOOLS = {"onnxsim": _onnxsim, "onnxslim": _onnxslim, "onnxoptimizer": _onnxoptimizer,
         "ort_basic": _onnxruntime("BASIC"), "ort_extended": _onnxruntime("EXTENDED"), "ort_all": _onnxruntime("ALL")}


def exported(case: Case) -> tuple[bytes, dict[str, np.ndarray], torch.nn.Module]:
    """(tiec's file, canonical parameter → array, the reference module) for random weights that no
    two parameters share by chance (fresh LayerNorms are all ones, which a tool may merge)."""
    return _exported(case.id, str(case.overrides))


@functools.cache
def _exported(case_id: str, overrides: str) -> tuple[bytes, dict[str, np.ndarray], torch.nn.Module]:
    case = next(c for c in CASES + BIG if c.id == case_id and str(c.overrides) == overrides)
    program = tiec.load(EX / f"{case.spec}.tie", overrides=case.overrides or None)
    module = program.torch(model=case.model).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    proto, _ = build(program.ir, case.model, program.weights_for(case.model, module))
    reference = case.reference().eval()
    reference.load_state_dict(module.state_dict(), strict=True)
    return proto.SerializeToString(), program.weights_for(case.model, module), reference


def copies(processed: onnx.ModelProto, params: dict[str, np.ndarray]) -> tuple[dict[str, int], list[tuple]]:
    """How many initializers hold each parameter's values (in any layout: sorted values equal), and
    the (name, shape) of every other initializer bigger than a shape constant."""
    keys = {name: np.sort(a, axis=None) for name, a in params.items()}
    held, others = dict.fromkeys(params, 0), []
    for t in processed.graph.initializer:
        a = numpy_helper.to_array(t)
        hits = [n for n, k in keys.items() if a.size == k.size and a.dtype == k.dtype
                and np.array_equal(np.sort(a, axis=None), k)]
        for n in hits:
            held[n] += 1
        if not hits and a.size > SHAPE_CONSTANT:
            others.append((t.name, a.shape))
    return held, others


def check_outputs(processed: onnx.ModelProto, case: Case, reference: torch.nn.Module) -> None:
    session = ort.InferenceSession(processed.SerializeToString(), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for batch in (1, 3):
        args = case.inputs(batch)
        feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
        got = session.run(None, feeds)[0]
        with torch.no_grad():
            want = reference(*args)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("case", CASES + BIG, ids=[c.id for c in CASES] + [f"{c.id}@17MB" for c in BIG])
def test_tool_keeps_one_initializer_per_group(case, tool, tmp_path):
    data, params, reference = exported(case)
    with contextlib.redirect_stdout(io.StringIO()):  # onnxsim and onnxslim print reports
        processed = TOOLS[tool](onnx.load_from_string(data), tmp_path)
    held, others = copies(processed, params)
    assert {n: c for n, c in held.items() if c != 1} == {}, f"{tool} copied or dropped parameters"
    assert others == [], f"{tool} made initializers that are no parameter"
    if case in BIG:
        unique = sum(a.nbytes for a in params.values())
        stored = sum(numpy_helper.to_array(t).nbytes for t in processed.graph.initializer)
        assert round(stored / unique, 3) == 1.000  # initializer bytes ÷ unique bytes, shape constants included
        assert len(processed.SerializeToString()) <= FILE_RATIO * unique
    check_outputs(processed, case, reference)
