"""Fuzzing the compiler: generated and mutated specs, run in a child process with limits.

- `generate`: Hypothesis strategies: specs drawn from `grammars/tie.lark`, token- and line-level
  mutations of `tests/fixtures`, and valid specs with their own bookkeeping of parameters.
- `worker`: the child process (memory limit, per-input time limit) that runs each input through
  `tiec check` and every backend, and the parent's handle on it.
- `campaign`: `python -m tests.fuzzing --n N` (`make fuzz N=…`) prints counts of outcomes.
"""
from __future__ import annotations
