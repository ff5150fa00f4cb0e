"""Forward speed: the compiled ALBERT module / the hand-written reference, same weights, same input.

Two figures, each the median of interleaved runs: inference (eval mode under
`torch.inference_mode`) and a training step's forward+backward (train mode; the model has no
dropout, so both compute the same thing; loss = logits.float().mean()). Thread count is
torch's default. Both modules must agree on the benchmark input before anything is timed.
"""
from __future__ import annotations

import torch

from common import Figure, alternate
from references import check_same, example_inputs, load_compiled, reference_for

GOAL_FORWARD, GOAL_TRAIN = 1.02, 1.03


def inference(module: torch.nn.Module, args: tuple):
    def step():
        with torch.inference_mode():
            module(*args)
    return step


def train_step(module: torch.nn.Module, args: tuple):
    def step():
        module.zero_grad(set_to_none=True)
        module(*args).float().mean().backward()
    return step


def run(quick: bool = False, batch: int | None = None, seq: int | None = None,
        rounds: tuple[int, int] | None = None, overrides: dict | None = None) -> tuple[list[Figure], dict]:
    """ALBERT as in examples/albert.tie (`overrides`: model parameters, for a smaller one)."""
    batch = batch or (2 if quick else 8)
    seq = seq or (64 if quick else 128)
    fwd_rounds, train_rounds = rounds or ((8, 6) if quick else (16, 10))
    program, compiled = load_compiled("albert", overrides)
    ref = reference_for("albert", program, compiled)
    args = example_inputs("albert", program, batch, seq)
    diff = check_same(ref, compiled, args, atol=1e-3)
    base = "hand-written nn.Module, same weights"
    shape = f"tokens [{batch}, {seq}]"

    ref.eval()
    compiled.eval()
    fwd = alternate(inference(ref, args), inference(compiled, args), fwd_rounds)
    ref.train()
    compiled.train()
    train = alternate(train_step(ref, args), train_step(compiled, args), train_rounds)
    figures = [
        Figure("albert forward (eval, inference_mode)", fwd.paired_ratio, GOAL_FORWARD, "<=", base,
               note=f"{shape}; rounds {fwd.spread()}; ratio of medians {fwd.ratio:.3f}", details=fwd.summary()),
        Figure("albert forward+backward (train)", train.paired_ratio, GOAL_TRAIN, "<=", base,
               note=f"{shape}; rounds {train.spread()}; ratio of medians {train.ratio:.3f}", details=train.summary()),
    ]
    return figures, {"settings": {"batch": batch, "seq": seq, "rounds": [fwd_rounds, train_rounds], "overrides": overrides,
                                  "threads": torch.get_num_threads()}, "max_abs_diff": diff}
