"""Hand-written PyTorch references for the example specs: the baselines every benchmark measures against.

Each module is written the way a person would write it in PyTorch, with state-dict keys equal to
those of the module tiec compiles from the same spec, so `load_reference` can copy the compiled
weights in with `strict=True` and check that both give the same outputs before anything is timed.
Tied weights are tied the ordinary PyTorch way (one `nn.Parameter` assigned twice, or read `.T`).

Only torch is needed here (benchmarks/gpu.py runs with torch and tiec alone).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# --------------------------------------------------------------------------- ALBERT
class AlbertLayer(nn.Module):
    """One post-LN encoder layer; ALBERT applies the same instance at every depth."""

    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.attn_norm = nn.LayerNorm(d, eps=1e-12)
        self.up = nn.Linear(d, ffn)
        self.down = nn.Linear(ffn, d)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x):
        h = self.attn_norm(x + self.attn(x, x, x, need_weights=False)[0])
        return self.ffn_norm(h + self.down(F.gelu(self.up(h))))


class Albert(nn.Module):
    """ALBERT-base-like: factorised embeddings, one shared layer applied `layers` times, tied output."""

    def __init__(self, vocab=30000, e=128, d=768, heads=12, ffn=3072, layers=12, max_len=512):
        super().__init__()
        self.layers = layers
        self.embed = nn.Embedding(vocab, e)
        self.pos = nn.Embedding(max_len, e)
        self.embed_norm = nn.LayerNorm(e, eps=1e-12)
        self.project = nn.Linear(e, d)
        self.layer = AlbertLayer(d, heads, ffn)
        self.head = nn.Linear(d, e)
        self.head_norm = nn.LayerNorm(e, eps=1e-12)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        x = self.project(self.embed_norm(self.embed(tokens) + self.pos(positions)))
        for _ in range(self.layers):
            x = self.layer(x)
        return self.head_norm(F.gelu(self.head(x))) @ self.embed.weight.T


# --------------------------------------------------------------------------- GPT-2
class GPT2Block(nn.Module):
    """Pre-LN causal block (nanoGPT's shape, with torch's fused attention module)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT2Small(nn.Module):
    """GPT-2-small-like, with `lm_head.weight` the same Parameter as `wte.weight`."""

    def __init__(self, vocab=50257, context=1024, d=768, heads=12, layers=12):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.h = nn.ModuleList([GPT2Block(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens):
        t = tokens.shape[-1]
        mask = torch.ones(t, t, dtype=torch.bool, device=tokens.device).triu(1)
        x = self.wte(tokens) + self.wpe(torch.arange(t, device=tokens.device))
        for block in self.h:
            x = block(x, mask)
        return self.lm_head(self.ln_f(x))


# --------------------------------------------------------------------------- small examples
class TiedAutoencoder(nn.Module):
    """The decoder reads the encoder's weight transposed and keeps only its own bias."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(784, 256)
        self.dec = nn.Module()
        self.dec.bias = nn.Parameter(torch.zeros(784))

    def forward(self, x):
        return torch.sigmoid(F.linear(F.relu(self.enc(x)), self.enc.weight.T, self.dec.bias))


class Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 64)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc(h.flatten(1))


class Siamese(nn.Module):
    """One tower called on both inputs."""

    def __init__(self):
        super().__init__()
        self.tower = Tower()

    def forward(self, left, right):
        return F.cosine_similarity(self.tower(left), self.tower(right), dim=1)


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
