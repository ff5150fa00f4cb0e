"""The hand-written PyTorch references for the example specs, as baselines: loading, checking, inputs.

Each module is written the way a person would write it in PyTorch, with state-dict keys equal to
those of the module tiec compiles from the same spec, so `load_reference` can copy the compiled
weights in with `strict=True` and check that both give the same outputs before anything is timed.
Tied weights are tied the ordinary PyTorch way (one `nn.Parameter` assigned twice, or read `.T`).

Only torch and the repository's tests/references.py are needed (benchmarks/gpu.py runs with torch
and tiec alone).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# The hand-written models themselves are the test suite's (tests/references.py): one set of
# references for correctness tests and for the baselines measured here.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.references import GPT2 as GPT2Small
from tests.references import Albert, Siamese, TiedAutoencoder, TiedLM  # noqa: F401  (TiedLM: for ort_memory)


# --------------------------------------------------------------------------- registry
def _tokens(config: dict, batch: int, seq: int, generator: torch.Generator):
    return (torch.randint(0, config["vocab"], (batch, seq), generator=generator),)


def _images(config: dict, batch: int, seq: int, generator: torch.Generator):
    return tuple(torch.rand(batch, 1, 28, 28, generator=generator) for _ in range(2))


def _vectors(config: dict, batch: int, seq: int, generator: torch.Generator):
    return (torch.rand(batch, 784, generator=generator),)


# name → (spec file, model, reference class, inputs(config, batch, seq, generator), config keys the reference takes)
MODELS = {
    "albert": ("albert.tie", "Albert", Albert, _tokens, ("vocab", "e", "d", "heads", "ffn", "layers", "max_len")),
    "gpt2_small": ("gpt2_small.tie", "GPT2Small", GPT2Small, _tokens, ("vocab", "context", "d", "heads", "layers")),
    "tied_autoencoder": ("tied_autoencoder.tie", "TiedAutoencoder", TiedAutoencoder, _vectors, ()),
    "siamese": ("siamese.tie", "Siamese", Siamese, _images, ()),
}


def load_compiled(name: str, overrides: dict | None = None, seed: int = 0, spec: str | Path | None = None):
    """(program, compiled module) for example `name`, compiled by tiec with `overrides`."""
    import tiec

    file, model, *_ = MODELS[name]
    program = tiec.load(spec or EXAMPLES / file, overrides or None)
    return program, program.torch(model, seed)


def reference_for(name: str, program, compiled: nn.Module, check: bool = True, atol: float = 1e-4) -> nn.Module:
    """The hand-written reference of `name`, holding the compiled module's weights.

    The state dict is loaded with `strict=True` (same keys, same shapes); with `check`, both
    modules run on the same small input in eval mode and must agree to `atol`.

    Raises:
        AssertionError: the outputs differ.
    """
    _, model, cls, _, keys = MODELS[name]
    config = dict(program.ir.models[model].config)
    ref = cls(**{k: config[k] for k in keys})
    ref.load_state_dict(compiled.state_dict(), strict=True)
    if check:
        check_same(ref, compiled, example_inputs(name, program, 2, 8), atol)
    return ref


@torch.no_grad()
def check_same(ref: nn.Module, compiled: nn.Module, args: tuple, atol: float = 1e-4) -> float:
    """Largest absolute difference of the two modules' outputs on `args` (asserts ≤ atol)."""
    modes = ref.training, compiled.training
    ref.eval()
    compiled.eval()
    try:
        want, got = ref(*args), compiled(*args)
    finally:
        ref.train(modes[0])
        compiled.train(modes[1])
    assert want.shape == got.shape, f"output shapes differ: reference {tuple(want.shape)}, compiled {tuple(got.shape)}"
    diff = (want.float() - got.float()).abs().max().item()
    assert diff <= atol, f"outputs differ by {diff:.3g} (> {atol})"
    return diff


def example_inputs(name: str, program, batch: int, seq: int, seed: int = 0) -> tuple:
    """Deterministic inputs for example `name` as compiled in `program` (token ids below its
    vocabulary size; `seq` is ignored by models without a sequence)."""
    config = dict(program.ir.models[MODELS[name][1]].config)
    return MODELS[name][3](config, batch, seq, torch.Generator().manual_seed(seed))
