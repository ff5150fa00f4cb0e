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


READS = """model M {
    in tokens: i64[B, T]
    in x: [4, 5]
    in y: [B, 8]
    head = Linear(8, 20)
    embed = Embedding(8, 20) share weight = head.weight.T
    proj = Linear(3, 4)
    return head(y), embed(tokens), proj.weight.T @ x, transpose(x, 0, 1) @ proj.weight, y @ head.weight.T, head.weight.T + 1.0, y @ transpose(head.weight, 0, 1), transpose(proj.weight.T, 0, 1) @ proj.weight.T
}
"""


@pytest.mark.parametrize("tool", TOOLS)
def test_every_read_of_a_weight_keeps_one_initializer(tool, tmp_path):
    """A Linear, an Embedding holding its transpose (Gather on axis 1), Wᵀ @ x (Gemm transA),
    x @ W and y @ Wᵀ (Gemm transB), also written with `transpose` (twice: W itself); only
    `head.weight.T + 1`, which needs the transposed values themselves, reads a Transpose node,
    which a tool may fold into a constant of its own."""
    program = tiec.loads(READS)
    module = program.torch("M")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    params = program.weights_for("M", module)
    proto, _ = build(program.ir, "M", params)
    transposed = [n.input[0] for n in proto.graph.node if n.op_type == "Transpose" and n.input[0] in params]
    assert transposed == ["head.weight"]  # for the `+ 1.0` alone
    with contextlib.redirect_stdout(io.StringIO()):
        processed = TOOLS[tool](proto, tmp_path)
    held, _ = copies(processed, params)
    assert (held["head.weight"], held["proj.weight"]) == (1, 1)  # (proj.bias is never read: a tool may drop it)
    tokens, x, y = torch.tensor([[0, 7, 3]]), torch.randn(4, 5, generator=g), torch.randn(2, 8, generator=g)
    W, b, P = (torch.from_numpy(params[k]) for k in ("head.weight", "head.bias", "proj.weight"))
    want = [y @ W.T + b, W.T[tokens], P.T @ x, x.T @ P, y @ W.T, W.T + 1.0, y @ W.T, P @ P.T]
    session = ort.InferenceSession(processed.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"tokens": tokens.numpy(), "x": x.numpy(), "y": y.numpy()})
    for a, e in zip(got, want, strict=True):
        np.testing.assert_allclose(a, e.numpy(), rtol=1e-3, atol=1e-5)
