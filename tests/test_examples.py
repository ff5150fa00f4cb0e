"""Every example, end to end, against independent references.

For each (spec, model): the compiled module against a hand-written PyTorch model (strict state-dict
load, equal outputs, same number of tensors), onnxruntime against torch at several batch sizes
through one file, the emitted source against the live module, and the parameter counts.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tiec
from tests import references as R

EX = Path(__file__).resolve().parent.parent / "examples"
SMALL_BERT = {"vocab": 97, "e": 16, "d": 32, "heads": 4, "ffn": 64, "layers": 3, "max_len": 16}
SMALL_GPT2 = {"vocab": 97, "context": 16, "d": 32, "heads": 4, "layers": 2}


def flat(b, t=None):
    return [torch.randn(b, 784)]


def img2(b, t=None):
    return [torch.randn(b, 1, 28, 28), torch.randn(b, 1, 28, 28)]


def toks(vocab):
    return lambda b, t=7: [torch.randint(0, vocab, (b, t))]


@dataclass
class Case:
    spec: str
    model: str
    reference: Callable[[], torch.nn.Module]
    inputs: Callable
    overrides: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.spec}:{self.model}"


CASES = [
    Case("multitask", "TaskA", R.MLP, flat),
    Case("multitask", "TaskB", R.MLP, flat),
    Case("tied_autoencoder", "TiedAutoencoder", R.TiedAutoencoder, flat),
    Case("siamese", "Siamese", R.Siamese, img2),
    Case("deep_shared", "Deep", R.Deep, lambda b, t=None: [torch.randn(b, 128)]),
    Case("deep_shared", "DeepShared", lambda: R.Deep(shared=True), lambda b, t=None: [torch.randn(b, 128)]),
    Case("tied_lm", "TiedLM", R.TiedLM, toks(1000)),
    Case("tied_lm", "TiedLMExplicit", R.TiedLMExplicit, toks(1000)),
    Case("classifier_and_autoencoder", "Autoencoder", lambda: R.TiedAutoencoder(128), flat),
    Case("classifier_and_autoencoder", "Classifier", R.Classifier, flat),
    Case("albert", "Albert", lambda: R.Albert(**SMALL_BERT), toks(97), SMALL_BERT),
    Case("bert", "Bert", lambda: R.Albert(**SMALL_BERT, shared=False), toks(97), SMALL_BERT),
    Case("gpt2_small", "GPT2Small", lambda: R.GPT2(**SMALL_GPT2), toks(97), SMALL_GPT2),
]
IDS = [c.id for c in CASES]


def compiled(case: Case, seed: int = 0):
    program = tiec.load(EX / f"{case.spec}.tie", overrides=case.overrides or None)
    return program, program.torch(model=case.model, seed=seed).eval()


def outputs(y) -> list[torch.Tensor]:
    return [y] if isinstance(y, torch.Tensor) else list(y)


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(outputs(a), outputs(b), strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter off its initial value, as training would."""
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return module


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_hand_written_reference(case: Case):
    program, m = compiled(case)
    perturbed(m)
    ref = case.reference().eval()
    ref.load_state_dict(m.state_dict(), strict=True)
    xs = case.inputs(3)
    with torch.no_grad():
        assert_close(m(*xs), ref(*xs))
    assert len(list(m.parameters())) == len(list(ref.parameters()))
    unique = program.stats()["models"][case.model]["unique_params"]
    assert sum(p.numel() for p in m.parameters()) == unique == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_onnxruntime_matches_torch(case: Case, tmp_path):
    program, m = compiled(case)
    perturbed(m)
    path = tmp_path / "model.onnx"
    program.onnx(path, model=case.model, weights=m)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert len(proto.graph.initializer) >= len(list(m.parameters()))
    big = [t for t in proto.graph.initializer if np.prod(t.dims) >= 16]
    assert len(big) == sum(p.numel() >= 16 for p in m.parameters())  # one initializer per tensor
    unique_bytes = 4 * sum(p.numel() for p in m.parameters())
    assert path.stat().st_size <= 1.001 * unique_bytes + 64 * 1024
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for batch, t in ((2, 5), (5, 9)):
        xs = case.inputs(batch, t)
        with torch.no_grad():
            want = [y.numpy() for y in outputs(m(*xs))]
        got = session.run(None, {n: x.numpy() for n, x in zip(names, xs)})
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_emitted_source_matches_live_module(case: Case, tmp_path):
    program, m = compiled(case)
    perturbed(m)
    source = program.python(model=case.model)
    assert "import tiec" not in source and "from tiec" not in source  # standalone
    path = tmp_path / "emitted.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("emitted", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    emitted = getattr(module, case.model)(**case.overrides).eval()
    emitted.load_state_dict(m.state_dict(), strict=True)
    xs = case.inputs(2)
    with torch.no_grad():
        assert_close(emitted(*xs), m(*xs), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES[:10], ids=IDS[:10])
def test_stats_count_uses_and_tensors(case: Case):
    program, m = compiled(case)
    stats = program.stats()["models"][case.model]
    assert stats["unique_bytes"] == 4 * stats["unique_params"]
    assert stats["tensors"] == len(list(m.parameters()))
    assert stats["logical_params"] >= stats["unique_params"]
