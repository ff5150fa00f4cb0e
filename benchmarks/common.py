"""Shared benchmark machinery: alternating timed pairs, medians, figures, tables and JSON results.

Every timed figure is a median ratio: a candidate (tiec's output) against a baseline measured in the
same process, their runs interleaved in rounds so that drift in the machine's speed (thermal, other
load, caches) falls on both alike; the headline is the median over rounds of each round's
candidate/baseline, with the middle half of those ratios beside it. Nothing here claims an
absolute speed. Only the standard library and
(optionally) torch are used, so benchmarks/gpu.py can run where only torch and tiec are installed.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def timed(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> float:
    """Seconds one call of `fn` takes (after a GC, so a collection owed by earlier work is not billed here)."""
    gc.collect()
    if sync:
        sync()
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - start


@dataclass
class Pair:
    """Interleaved timings of a baseline and a candidate (seconds per call)."""

    baseline: list[float]
    candidate: list[float]
    rounds: int | None = None  # None: as many as the shorter list has calls

    @property
    def ratio(self) -> float:
        """median(candidate) / median(baseline): below 1 means the candidate is faster."""
        return median(self.candidate) / median(self.baseline)

    def round_ratios(self) -> list[float]:
        """candidate/baseline within each round (medians of that round's calls)."""
        n = self.rounds or min(len(self.baseline), len(self.candidate))
        per_b, per_c = len(self.baseline) // n, len(self.candidate) // n
        return [median(self.candidate[i * per_c:(i + 1) * per_c]) / median(self.baseline[i * per_b:(i + 1) * per_b])
                for i in range(n)]

    @property
    def paired_ratio(self) -> float:
        """Median over rounds of candidate/baseline in that round: the headline figure. A round's two
        sides run back to back, so load that comes and goes (a shared machine) falls on both."""
        return median(self.round_ratios())

    def spread(self) -> str:
        """The middle half of the per-round ratios, e.g. '0.98–1.04' (how far to trust the median)."""
        r = sorted(self.round_ratios())
        return f"{r[len(r) // 4]:.3f}–{r[(3 * len(r) - 1) // 4]:.3f}"

    def summary(self) -> dict:
        return {"paired_ratio": self.paired_ratio, "ratio_of_medians": self.ratio, "round_ratios": self.round_ratios(),
                "baseline_median_s": median(self.baseline), "candidate_median_s": median(self.candidate),
                "baseline_runs_s": self.baseline, "candidate_runs_s": self.candidate}


def interleave(fns: dict[str, Callable[[], Any]], rounds: int, *, warmup: int = 1,
               per_round: dict[str, int] | None = None,
               sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Time several callables in interleaved rounds: each round runs every one (`per_round[name]`
    calls, default 1), in the given order on even rounds and reversed on odd ones (ABBA order,
    so none always runs first or last). `warmup` untimed calls of each come first.

    Returns:
        name → per-call seconds.
    """
    per_round = per_round or {}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            times[name].extend(timed(fns[name], sync) for _ in range(per_round.get(name, 1)))
    return times


def alternate(baseline: Callable[[], Any], candidate: Callable[[], Any], rounds: int, *, warmup: int = 1,
              baseline_per_round: int = 1, candidate_per_round: int = 1,
              sync: Callable[[], None] | None = None) -> Pair:
    """Time `baseline` and `candidate` in alternation (see `interleave`).

    Args:
        baseline, candidate: zero-argument callables; their results are discarded.
        rounds: rounds of `baseline_per_round` baseline calls and `candidate_per_round` candidate calls.
        warmup: untimed calls of each before the first round.
        sync: called before and after each timed call (e.g. `torch.cuda.synchronize`).

    Returns:
        A `Pair` of the per-call seconds.
    """
    t = interleave({"baseline": baseline, "candidate": candidate}, rounds, warmup=warmup,
                   per_round={"baseline": baseline_per_round, "candidate": candidate_per_round}, sync=sync)
    return Pair(t["baseline"], t["candidate"], rounds)


@dataclass
class Figure:
    """One reported figure: a ratio against a baseline, and its goal (`≤ goal` or `≥ goal`)."""

    name: str
    value: float | None
    goal: float | None = None
    direction: str = "<="  # "<=", ">=" or "==" (the value must meet the goal in that sense)
    baseline: str = ""
    note: str = ""
    error: str | None = None
    details: dict = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None if self.goal is None else False
        if self.goal is None:
            return None
        return {"<=": self.value <= self.goal, ">=": self.value >= self.goal, "==": self.value == self.goal}[self.direction]

    def to_json(self) -> dict:
        return {**asdict(self), "met": self.met}


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        if x == 0 or 1e-3 <= abs(x) < 1e5:
            return f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"
        return f"{x:.3e}"
    return str(x)


def print_table(title: str, figures: list[Figure]) -> None:
    """A fixed-width table: figure, value, goal, met, baseline, note (or the error)."""
    rows = [("figure", "ratio", "goal", "met", "baseline", "note")]
    for f in figures:
        goal = "" if f.goal is None else f"{f.direction} {fmt(f.goal)}"
        note = f"FAILED: {f.error}" if f.error else f.note
        rows.append((f.name, fmt(f.value), goal, fmt(f.met) if f.met is not None else "-", f.baseline, note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    print(f"\n== {title}")
    for i, row in enumerate(rows):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1]
        print(line.rstrip())
        if i == 0:
            print("-" * min(len(line), 120))


def environment() -> dict:
    """Where the figures were taken (they are ratios, but the machine still matters)."""
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except ImportError:  # pragma: no cover - torch is a dependency of tiec
        pass
    return env


def write_json(name: str, figures: list[Figure], settings: dict, extra: dict | None = None,
               directory: Path | None = None) -> Path:
    """Write `<directory or benchmarks/results>/<name>.json` with the figures and how they were taken."""
    directory = directory or RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = {"benchmark": name, "settings": settings, "environment": environment(),
               "figures": [f.to_json() for f in figures], **(extra or {})}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def failure(name: str, err: BaseException, goal: float | None = None, direction: str = "<=", baseline: str = "") -> Figure:
    """A figure that could not be measured, carrying the first line of the error."""
    message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return Figure(name, None, goal, direction, baseline, error=message[:300])
