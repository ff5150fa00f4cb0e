"""Structure costs nothing per copy: compiling a deep spec to its PyTorch source.

The GPT-2-small layout (`examples/gpt2_small.tie`, full size) is compiled to its standalone
source (`tiec.loads(text, {"layers": n}).python()`: parse, elaborate, share groups, shapes, code
generation; no weights are allocated) at 96 layers and at 12, in alternating rounds. Figures:

- time at 96 layers / time at 12 (goal ≤ 2: the structured IR infers each block once, and the
  emitted `Block` class and `for h in self.h` loop do not grow with depth);
- emitted lines at 96 layers / at 12 (goal == 1: the file's length depends on the spec alone);
- the same two for ALBERT, whose one layer is applied 12 or 96 times (`repeat … share`).
"""
from __future__ import annotations

from pathlib import Path

import tiec

from common import Figure, alternate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GOAL_TIME, SHALLOW, DEEP = 2.0, 12, 96


def _case(spec: str, rounds: int) -> list[Figure]:
    text = (EXAMPLES / spec).read_text()

    def emit(layers: int):
        return lambda: tiec.loads(text, {"layers": layers}, filename=spec).python()

    pair = alternate(emit(SHALLOW), emit(DEEP), rounds, warmup=2)
    shallow, deep = emit(SHALLOW)(), emit(DEEP)()
    lines = deep.count("\n") / shallow.count("\n")
    return [
        Figure(f"{spec}: source at {DEEP} layers / at {SHALLOW}", pair.paired_ratio, GOAL_TIME,
               baseline=f"the same at {SHALLOW} layers", note=f"middle half of rounds {pair.spread()}",
               details=pair.summary()),
        Figure(f"{spec}: emitted lines at {DEEP} / at {SHALLOW}", lines, 1.0, "==",
               baseline=f"{shallow.count(chr(10))} lines at {SHALLOW} layers"),
    ]


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    rounds = 9 if quick else 31
    figures = _case("gpt2_small.tie", rounds) + _case("albert.tie", rounds)
    return figures, {"settings": {"rounds": rounds, "layers": [SHALLOW, DEEP]}}
