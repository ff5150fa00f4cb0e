"""examples/gru.tie and examples/lstm.tie against torch.nn.GRU and torch.nn.LSTM: the reference's own
state dict loads strictly, outputs match for several sequence lengths through one compiled module
and one ONNX file, gradients match, each weight is one tensor (one initializer, read by every step
of the ONNX Scan), and the unique parameters are the reference's."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tiec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SIZES = {"input_size": 6, "hidden_size": 10}
LENGTHS = (1, 4, 13)


def gru():
    torch.manual_seed(0)
    return torch.nn.GRU(6, 10, batch_first=True).eval()


def lstm():
    torch.manual_seed(0)
    return torch.nn.LSTM(6, 10, num_layers=2, batch_first=True).eval()


def run_reference(ref, x, states):
    if isinstance(ref, torch.nn.LSTM):
        y, (h, c) = ref(x, states)
        return y, h, c
    y, h = ref(x, states[0])
    return y, h


CASES = {"gru": (gru, 1), "lstm": (lstm, 2)}


def states(kind: str, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    layers = CASES[kind][1]
    h = torch.randn(layers, batch, 10, generator=g)
    return (h,) if kind == "gru" else (h, torch.randn(layers, batch, 10, generator=g))


@pytest.mark.parametrize("kind", sorted(CASES))
def test_rnn_loads_the_reference_checkpoint_and_matches_it(kind, tmp_path):
    ref = CASES[kind][0]()
    program = tiec.load(EXAMPLES / f"{kind}.tie", SIZES)
    module = program.torch().eval()
    module.load_state_dict(ref.state_dict(), strict=True)
    assert program.stats()["models"][kind.upper()]["unique_params"] == sum(p.numel() for p in ref.parameters())

    path = tmp_path / f"{kind}.onnx"
    program.onnx(path, weights=module)
    proto = onnx.load(path)
    assert [n.op_type for n in proto.graph.node].count("Scan") == CASES[kind][1]
    params = {i.name: i for i in proto.graph.initializer if not i.name.startswith("~")}
    assert sorted(params) == sorted(ref.state_dict())  # each weight once, under its key
    unique = sum(p.numel() * 4 for p in ref.parameters())
    assert sum(len(i.raw_data) for i in params.values()) == unique
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    for t in LENGTHS:
        x = torch.randn(3, t, 6, generator=torch.Generator().manual_seed(t))
        s = states(kind, 3, t)
        with torch.no_grad():
            want = run_reference(ref, x, s)
            got = module(x, *s)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        outs = session.run(None, dict(zip(feeds, [x.numpy(), *(v.numpy() for v in s)])))
        for o, w in zip(outs, want):
            np.testing.assert_allclose(o, w.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_rnn_gradients_match_the_reference(kind):
    ref = CASES[kind][0]().train()
    module = tiec.load(EXAMPLES / f"{kind}.tie", SIZES).torch().train()
    module.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 9, 6, generator=torch.Generator().manual_seed(3))
    s = states(kind, 2, 5)
    sum(o.square().sum() for o in run_reference(ref, x, s)).backward()
    sum(o.square().sum() for o in module(x, *s)).backward()
    grads = dict(module.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_rnn_emitted_source_is_the_live_module(kind):
    program = tiec.load(EXAMPLES / f"{kind}.tie", SIZES)
    source = program.python()
    assert ".unbind(1):" in source and "torch.stack(" in source
    namespace: dict = {}
    exec(compile(source, f"<{kind}>", "exec"), namespace)  # noqa: S102 - the source under test
    emitted = namespace[kind.upper()](**SIZES).eval()
    live = program.torch().eval()
    emitted.load_state_dict(live.state_dict(), strict=True)
    x = torch.randn(2, 5, 6)
    s = states(kind, 2, 1)
    with torch.no_grad():
        for a, b in zip(emitted(x, *s), live(x, *s)):
            assert torch.equal(a, b)
    assert math.isclose(len(source.splitlines()), len(tiec.load(EXAMPLES / f"{kind}.tie", {
        "input_size": 60, "hidden_size": 100}).python().splitlines()))


@pytest.mark.parametrize("tool", ["onnxsim", "onnxslim", "onnxoptimizer", "ort_basic", "ort_all"])
def test_every_weight_stays_one_initializer_after_the_onnx_tools(tool, tmp_path):
    from tests.test_onnx_tools import TOOLS

    ref = lstm()
    program = tiec.load(EXAMPLES / "lstm.tie", SIZES)
    module = program.torch().eval()
    module.load_state_dict(ref.state_dict(), strict=True)
    path = tmp_path / "lstm.onnx"
    program.onnx(path, weights=module)
    processed = TOOLS[tool](onnx.load(path), tmp_path)
    weights = sorted(tuple(i.dims) for i in _initializers(processed.graph) if np.prod(i.dims) > 64)
    assert weights == sorted(tuple(p.shape) for p in ref.parameters() if p.numel() > 64)  # a tool may move one into the loop
    session = ort.InferenceSession(processed.SerializeToString(), providers=["CPUExecutionProvider"])
    for t in (2, 9):
        x = torch.randn(2, t, 6, generator=torch.Generator().manual_seed(t))
        s = states("lstm", 2, t)
        with torch.no_grad():
            want = run_reference(ref, x, s)
        feeds = dict(zip([i.name for i in session.get_inputs()], [x.numpy(), *(v.numpy() for v in s)]))
        for o, w in zip(session.run(None, feeds), want):
            np.testing.assert_allclose(o, w.numpy(), rtol=1e-3, atol=1e-5)


def _initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """A graph's initializers and its subgraphs' (a Scan body's), recursively."""
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out += _initializers(attr.g)
    return out


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_fresh_rnn_starts_as_torch_does(kind):
    torch.manual_seed(0)
    ours = dict(tiec.load(EXAMPLES / f"{kind}.tie", SIZES).torch().named_parameters())
    ref = dict(CASES[kind][0]().named_parameters())
    bound = 1 / 10 ** 0.5  # U(-1/√hidden, 1/√hidden) for every tensor
    for name, p in ref.items():
        assert ours[name].shape == p.shape and ours[name].abs().max() <= bound
    everything = torch.cat([p.detach().flatten() for p in ours.values()])
    assert abs(everything.std().item() - bound / 3 ** 0.5) < 0.02
