"""A fuzz campaign: `python -m tests.fuzzing --n N` (or `make fuzz N=…`).

N inputs, a quarter drawn from the grammar, half mutated fixtures and a quarter valid specs
(checked differentially), all run by one `Worker`. It prints how many inputs gave a success, a
located diagnostic or a bad outcome, the bad ones by class and source, and for each distinct
error one input, minimised (lines, statements, then tokens removed while the error stays the
same). Exit status 1 when any outcome was bad.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as seeded

from .generate import fixture_mutations, grammar_specs, tokens, valid_specs
from .worker import Outcome, Worker

SOURCES = (("grammar", 0.25), ("mutation", 0.5), ("valid", 0.25))


def minimise(text: str, keeps: Callable[[str], bool], budget: int = 600) -> str:
    """A smaller `text` for which `keeps` still holds: chunks of lines, of statements (lines split
    at `;`), then of tokens, removed greedily, halving the chunk size down to one (at most
    `budget` calls of `keeps`)."""
    calls = 0
    for unit in ("lines", "statements", "tokens"):
        parts = tokens(text) if unit == "tokens" else text.split("\n") if unit == "lines" else re.split(r"[;\n]", text)
        join = "".join if unit == "tokens" else "\n".join
        size = max(1, len(parts) // 2)
        while size >= 1 and calls < budget:
            i = 0
            while i < len(parts) and calls < budget:
                candidate = parts[:i] + parts[i + size:]
                calls += 1
                if candidate and keeps(join(candidate)):
                    parts = candidate
                else:
                    i += size
            size //= 2
        text = join(parts)
    return text


class Tally:
    """Outcomes by source and kind; the bad ones by class, with their inputs."""

    def __init__(self) -> None:
        self.kinds: Counter[tuple[str, str]] = Counter()
        self.bad: dict[str, list[tuple[str, str, Outcome]]] = {}
        self.notes: Counter[str] = Counter()

    def add(self, source: str, text: str, outcome: Outcome) -> None:
        self.kinds[(source, outcome.kind)] += 1
        if outcome.kind == "ok" and outcome.detail:
            self.notes[outcome.detail] += 1
        if outcome.bad:
            self.bad.setdefault(outcome.cls, []).append((source, text, outcome))

    def total(self, kind: str | None = None, source: str | None = None) -> int:
        return sum(n for (s, k), n in self.kinds.items() if kind in (None, k) and source in (None, s))


def run_source(worker: Worker, source: str, n: int, tally: Tally, seed: int | None) -> None:
    strategy = {"grammar": grammar_specs(), "mutation": fixture_mutations(), "valid": valid_specs()}[source]

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def campaign(drawn) -> None:
        if source == "valid":
            tally.add(source, drawn.text, worker.run("differential", drawn.text, drawn.expect()))
        else:
            tally.add(source, drawn, worker.run("examine", drawn))

    (seeded(seed)(campaign) if seed is not None else campaign)()


def signature(outcome: Outcome) -> str:
    """What tells one bug from another of the same class: the last line of the detail (the
    exception's message), without the model's name, numbers and quoted names blanked."""
    last = next((line for line in reversed(outcome.detail.strip().split("\n")) if line.strip()), "")
    last = re.sub(r"^model \S+?(, output \S+)?( \(symbols [^)]*\))?: ", "", last.strip())  # which model: no matter
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'…'", last))[:120]


def report(tally: Tally, worker: Worker, shrink: bool, per_class: int = 5) -> str:
    """Counts, then per bad class its count and, per distinct signature (up to `per_class`), the
    shortest input, minimised unless it is a valid spec (whose edits would not stay valid)."""
    lines = [f"inputs: {tally.total()} (" + ", ".join(f"{s} {tally.total(source=s)}" for s, _ in SOURCES) + ")",
             f"successes: {tally.total('ok')}" + "".join(f" ({n} {note})" for note, n in tally.notes.items()),
             f"diagnostics: {tally.total('diagnostic')}",
             f"bad outcomes: {tally.total('bad')}"]
    for cls, cases in sorted(tally.bad.items(), key=lambda kv: -len(kv[1])):
        sources = Counter(s for s, _, _ in cases)
        lines.append(f"  {cls}: {len(cases)} (" + ", ".join(f"{s} {n}" for s, n in sources.items()) + ")")
        kinds: dict[str, list] = {}
        for case in cases:
            kinds.setdefault(signature(case[2]), []).append(case)
        for sig, same in list(kinds.items())[:per_class]:
            source, text, outcome = min(same, key=lambda c: len(c[1]))
            shrunk = shrink and source != "valid"
            if shrunk:
                text = minimise(text, lambda t, sig=sig: signature(worker.run("examine", t)) == sig)
                outcome = worker.run("examine", text)
            lines += [f"    {len(same)} × {sig}", "    input" + (" (minimised)" if shrunk else "") + ":",
                      *(f"      | {line}" for line in text.split("\n")),
                      *(f"      {line}" for line in outcome.detail.strip().split("\n")[-6:])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzzing", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="inputs in all (default 2000)")
    p.add_argument("--seed", type=int, help="Hypothesis seed (default: random)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per input (default 20)")
    p.add_argument("--memory-gib", type=float, default=2.0, help="memory per worker beyond its imports (default 2)")
    p.add_argument("--no-shrink", action="store_true", help="report bad inputs as found")
    args = p.parse_args(argv)
    tally, start = Tally(), time.monotonic()
    with contextlib.closing(Worker(args.timeout, args.memory_gib)) as worker:
        for source, share in SOURCES:
            run_source(worker, source, max(1, round(args.n * share)), tally, args.seed)
        print(report(tally, worker, not args.no_shrink))
        print(f"worker restarts: {worker.restarts}; {time.monotonic() - start:.0f} s")
    return 1 if tally.total("bad") else 0
