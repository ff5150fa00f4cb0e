"""GRU over T = 256 on CPU: tiec's module of examples/gru.tie against torch.nn.GRU holding the same
weights (loaded strictly), in one run; forward (eval, no gradients) and a training step (forward,
backward). Calls alternate; a figure is the median over rounds of (tiec / nn.GRU).

No goal: nn.GRU runs the whole recurrence in one fused kernel (`torch._VF.gru`: every step's gate
arithmetic in C++, the input projection of all steps as one matrix product), while tiec's module
runs the loop in Python, about ten tensor ops a step, each paying the dispatcher. The figure says
what the Python loop costs; closing it takes running the step without Python (compiling the cell,
or lowering a recognised GRU cell to the fused kernel).
"""
from __future__ import annotations

from pathlib import Path

import tiec
import torch

from common import Figure, alternate

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gru.tie"
SIZES = {"input_size": 128, "hidden_size": 256}


def modules(sizes: dict):
    torch.manual_seed(0)
    ref = torch.nn.GRU(sizes["input_size"], sizes["hidden_size"], batch_first=True)
    ours = tiec.load(EXAMPLE, sizes).torch()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    sizes = {"input_size": 32, "hidden_size": 64} if quick else SIZES
    batch, steps, rounds = (4, 32, 3) if quick else (16, 256, 5)
    ours, ref = modules(sizes)
    x = torch.randn(batch, steps, sizes["input_size"], generator=torch.Generator().manual_seed(0))
    h0 = torch.zeros(1, batch, sizes["hidden_size"])
    ours.eval(), ref.eval()
    with torch.inference_mode():
        diff = (ours(x, h0)[0] - ref(x, h0)[0]).abs().max().item()
        forward = alternate(lambda: ref(x, h0), lambda: ours(x, h0), rounds)

    def step(module):
        def once():
            module.zero_grad(set_to_none=True)
            module(x, h0)[0].square().mean().backward()
        return once

    ours.train(), ref.train()
    train = alternate(step(ref), step(ours), rounds)
    note = f"input {sizes['input_size']}, hidden {sizes['hidden_size']}, batch {batch}, T {steps}"
    figures = [
        Figure("gru forward: tiec / nn.GRU", forward.paired_ratio, None, "<=", "torch.nn.GRU (fused kernel)",
               note=f"{note}; max |diff| {diff:.2e}; rounds {forward.spread()}", details=forward.summary()),
        Figure("gru train step: tiec / nn.GRU", train.paired_ratio, None, "<=", "torch.nn.GRU (fused kernel)",
               note=f"{note}; rounds {train.spread()}", details=train.summary()),
    ]
    return figures, {"settings": {"sizes": sizes, "batch": batch, "steps": steps, "rounds": rounds}}
