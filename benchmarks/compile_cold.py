"""torch.compile cold start on CPU (inductor): `tiec.compile` against whole-model compile of GPT-2.

GPT-2-small's layout (12 layers, d 768, 12 heads, vocabulary 50257, context 1024), a batch of
2 × 64 tokens, one training step = forward, cross-entropy, backward. Variants (`--variants`):

    whole                 torch.compile(reference): the baseline, the hand-written GPT-2
    tiec                  tiec.compile(tiec's module), the default rest="eager": blocks only, one
                          graph per class, the tied embedding and head of tiec/tied_rest.py
    tiec regions          tiec.compile(tiec's module, rest="compiled"): block forwards as nested
                          compile regions in one whole-model graph
    whole emitted         torch.compile(tiec's module)
    whole probed          torch.compile(reference) after `tiec.compile.probe_cpu_in_background()`:
                          how much of tiec's figure is the background probe, not the blocks
    tiec reference        tiec.compile(reference): the same recipe on the hand-written module
    tiec regions reference, tiec dynamic=False   (the latter: tiec, torch.compile(dynamic=False))

tiec's module is `tiec.load("examples/gpt2_small.tie", sizes).torch(model="GPT2Small")`; the
reference (benchmarks/references.py) holds its weights. `--module reference` runs the tiec
variants on the reference instead (a stand-in with `Block` classes, should the emitted module
ever lack them).

Cold start: each variant runs in a fresh process with a fresh, empty temporary folder for every
cache torch keeps (inductor's FX-graph, AOT-autograd and kernel caches, triton's, XDG), remote
caches off. Timed from the compile call to the end of the first step (lazy imports, tracing,
code generation, the C++ compiler, the step itself). Processes run in rounds, ABBA order; a
figure is the median over rounds of (variant / whole) in that round. CPU seconds of the whole
process tree (compile workers and compilers included as far as they are waited for;
set-up before the compile call and everything after the first step excluded) are
reported beside it: on a shared machine they move less than wall time.

Steady state: one more process builds every variant's module, compiles and warms it, then times
steps interleaved (benchmarks/common.py); ratio = median over rounds of variant / whole. Block
classes are copied per module there, so one variant's regions do not leak into another's. With
`whole emitted` measured, tiec is also reported against it (the same module compiled whole): the
two baselines compute the same thing, so their ratio shows how far a figure can be trusted. On a
busy machine `--threads 1` keeps a descheduled thread from stalling a step.

Numerics: each cold process compares its last step's loss and gradients with an eager step of an
uncompiled copy: `excess` = max |got − want| / (atol + rtol·|want|), rtol 1e-3, atol 1e-5
(≤ 1: within tolerance).

`python benchmarks/compile_cold.py --layers 4 --rounds 1` is a quick look (each process pays the
compiler's fixed start-up, so small models are not much faster); `run.py --quick` runs whole
against tiec at 2 layers of d 256, one round.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import Figure, Pair, interleave, median, print_table, write_json

GOAL_COLD, GOAL_STEP, RTOL, ATOL = 0.5, 1.05, 1e-3, 1e-5
BASELINE = "whole"
# name → (module, recipe, torch.compile keyword arguments)
VARIANTS = {
    "whole": ("reference", "whole", {}),
    "tiec": ("emitted", "eager", {}),
    "tiec regions": ("emitted", "compiled", {}),
    "whole emitted": ("emitted", "whole", {}),
    "whole probed": ("reference", "whole probed", {}),
    "tiec reference": ("reference", "eager", {}),
    "tiec regions reference": ("reference", "compiled", {}),
    "tiec dynamic=False": ("emitted", "eager", {"dynamic": False}),
}
DEFAULT_VARIANTS = ("whole", "tiec", "tiec regions", "whole emitted", "whole probed")
GOAL_VARIANT = "tiec"  # the goals are for tiec.compile as recommended
SAME_MODULE = "whole emitted"  # whole-model compile of the module tiec compiles
SIZES = {"layers": 12, "d": 768, "heads": 12, "vocab": 50257, "context": 1024}
QUICK_SIZES = {"layers": 2, "d": 256, "heads": 4, "vocab": 50257, "context": 1024}
CACHE_ENV = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton", "XDG_CACHE_HOME": "xdg"}
FIXED_ENV = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
             "TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_REMOTE_CACHE": "0",
             "TORCHINDUCTOR_AUTOTUNE_REMOTE_CACHE": "0", "TORCHINDUCTOR_BUNDLED_AUTOTUNE_REMOTE_CACHE": "0"}


# --------------------------------------------------------------------------- inside a process
def build(kind: str, sizes: dict, module: str):
    """The module a variant compiles: tiec's GPT2Small, or the reference holding its weights."""
    from references import load_compiled, reference_for

    program, emitted = load_compiled("gpt2_small", sizes)
    if kind == "emitted" and module == "emitted":
        return emitted
    return reference_for("gpt2_small", program, emitted)


def private_blocks(model) -> None:
    """Give the model's block instances a subclass of their own, so marking it marks only them."""
    import tiec.compile as tc

    for cls, subs in tc.block_classes(model).items():
        own = type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
        for sub in subs:
            sub.__class__ = own


def apply(variant: str, model):
    """Compile `model` as `variant` does; returns the callable to step."""
    import tiec.compile as tc
    import torch

    _, recipe, kwargs = VARIANTS[variant]
    if recipe.startswith("whole"):
        if recipe == "whole probed":
            tc.probe_cpu_in_background()
        return torch.compile(model, **kwargs)
    return tc.compile(model, rest=recipe, **kwargs)


def inputs(sizes: dict, batch: int, seq: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randint(0, sizes["vocab"], (batch, seq), generator=gen) for _ in range(2))


def train_step(model, run, tokens, targets):
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(run(tokens).flatten(0, 1).float(), targets.flatten())
    loss.backward()
    return loss


def excess(model, eager, loss, want_loss) -> float:
    """max |got − want| / (atol + rtol·|want|) over the loss and every gradient."""
    pairs = [(loss.detach(), want_loss.detach())]
    pairs += [(p.grad, q.grad) for p, q in zip(model.parameters(), eager.parameters()) if q.grad is not None]
    return max(((a - b).abs() / (ATOL + RTOL * b.abs())).max().item() for a, b in pairs)


def cold_worker(variant: str, cfg: dict) -> dict:
    """One variant's cold start, steady steps and numerics, in this (fresh) process."""
    import torch
    from torch._dynamo.utils import counters

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    model = build(VARIANTS[variant][0], cfg["sizes"], cfg["module"])
    eager = copy.deepcopy(model)
    tokens, targets = inputs(cfg["sizes"], cfg["batch"], cfg["seq"])
    setup_cpu = time.process_time()
    start = time.perf_counter()
    run = apply(variant, model)
    train_step(model, run, tokens, targets)
    cold, cold_end_cpu = time.perf_counter() - start, time.process_time()
    steps = []
    for _ in range(cfg["steps"]):
        t = time.perf_counter()
        loss = train_step(model, run, tokens, targets)
        steps.append(time.perf_counter() - t)
    want = train_step(eager, eager, tokens, targets)
    numerics = excess(model, eager, loss, want)
    return {"variant": variant, "cold_s": cold, "step_s": median(steps), "steps_s": steps, "setup_cpu_s": setup_cpu,
            "after_cpu_s": time.process_time() - cold_end_cpu, "excess": numerics,
            "loss": loss.item(), "stats": dict(counters["stats"]), "frames": dict(counters["frames"]),
            "graph_breaks": sum(counters["graph_break"].values()), "recompiles": len(counters["recompiles"])}


def steady_worker(variants: list[str], cfg: dict) -> dict:
    """Every variant's module compiled in this process, then their steps timed interleaved."""
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    tokens, targets = inputs(cfg["sizes"], cfg["batch"], cfg["seq"])
    steps = {}
    for variant in variants:
        model = build(VARIANTS[variant][0], cfg["sizes"], cfg["module"])
        private_blocks(model)
        run = apply(variant, model)
        steps[variant] = (lambda m=model, r=run: train_step(m, r, tokens, targets))
    per_round = {v: cfg["steps_per_round"] for v in steps}
    times = interleave(steps, cfg["step_rounds"], warmup=2, per_round=per_round)
    return {"times": times}


# --------------------------------------------------------------------------- the driver
def fresh_env(folder: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "TRITON_", "TORCH_COMPILE"))}
    env.update({k: os.path.join(folder, sub) for k, sub in CACHE_ENV.items()}, **FIXED_ENV)
    env.pop("TORCH_LOGS", None)
    return env


def spawn(args: list[str], cfg: dict, timeout: float) -> tuple[dict, float]:
    """Run this file with `args` in a fresh process and fresh caches → (its JSON, CPU seconds of its tree)."""
    with tempfile.TemporaryDirectory(prefix="tiec-cold-") as folder:
        cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--config", json.dumps(cfg)]
        proc = subprocess.Popen(cmd, env=fresh_env(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_utime + usage.ru_stime


def measure(cfg: dict, variants: list[str], rounds: int, steady: bool, timeout: float = 1800) -> tuple[list[Figure], dict]:
    """Cold rounds (ABBA over the variants, the baseline among them), then one steady process."""
    variants = [BASELINE] + [v for v in variants if v != BASELINE]
    cold: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            result, after = spawn(["--worker", v], cfg, timeout)
            tree_cpu = after - (before.ru_utime + before.ru_stime)
            result["cold_cpu_s"] = tree_cpu - result["setup_cpu_s"] - result["after_cpu_s"]
            cold[v].append(result)
            print(f"  round {r + 1} {v:28s} cold {result['cold_s']:7.1f} s  cpu {result['cold_cpu_s']:7.1f} s  "
                  f"step {result['step_s']:.3f} s  excess {result['excess']:.2g}", flush=True)
    times = spawn(["--steady", ",".join(variants)], cfg, timeout)[0]["times"] if steady else {}
    figures = []
    shape = f"{cfg['sizes']['layers']} layers, d {cfg['sizes']['d']}, tokens [{cfg['batch']}, {cfg['seq']}]"
    # Against the reference (the goals), and tiec against whole-model compile of its own module.
    pairs = [(v, BASELINE) for v in variants[1:]]
    pairs += [(GOAL_VARIANT, SAME_MODULE)] if {GOAL_VARIANT, SAME_MODULE} <= set(variants) else []
    for v, b in pairs if rounds else ():
        goal = (v, b) == (GOAL_VARIANT, BASELINE)
        wall = [c["cold_s"] / d["cold_s"] for c, d in zip(cold[v], cold[b])]
        cpu = [c["cold_cpu_s"] / d["cold_cpu_s"] for c, d in zip(cold[v], cold[b])]
        figures.append(Figure(f"{v}: cold start" + ("" if b == BASELINE else f" / {b}"), median(wall),
                              GOAL_COLD if goal else None, "<=", f"{b} (torch.compile)", details={"variant": cold[v]},
                              note=f"{shape}; rounds {', '.join(f'{x:.3f}' for x in wall)}; CPU {median(cpu):.3f}"))
    for v, b in pairs if times else ():
        pair = Pair(times[b], times[v], cfg["step_rounds"])
        figures.append(Figure(f"{v}: step (fwd+bwd)" + ("" if b == BASELINE else f" / {b}"), pair.paired_ratio,
                              GOAL_STEP if (v, b) == (GOAL_VARIANT, BASELINE) else None, "<=", f"{b} (torch.compile)",
                              details=pair.summary(),
                              note=f"{shape}; rounds {pair.spread()}; ratio of medians {pair.ratio:.3f}"))
    for v in variants if rounds else ():
        figures.append(Figure(f"{v}: grads vs eager (excess)", max(c["excess"] for c in cold[v]), 1.0, "<=",
                              "eager, same weights", note=f"rtol {RTOL:g}, atol {ATOL:g}; loss {cold[v][0]['loss']:.4f}"))
    extra = {"settings": {**cfg, "variants": variants, "rounds": rounds},
             "cold_seconds": {v: [c["cold_s"] for c in cold[v]] for v in variants},
             "cold_cpu_seconds": {v: [c["cold_cpu_s"] for c in cold[v]] for v in variants},
             "compile_counters": {v: {k: c[0][k] for k in ("stats", "frames", "graph_breaks", "recompiles")}
                                  for v, c in cold.items() if c}}
    return figures, extra


def config(sizes: dict, batch: int = 2, seq: int = 64, steps: int = 5, step_rounds: int = 8, steps_per_round: int = 2,
           module: str = "emitted", threads: int | None = None) -> dict:
    return {"sizes": sizes, "batch": batch, "seq": seq, "steps": steps, "step_rounds": step_rounds,
            "steps_per_round": steps_per_round, "module": module, "threads": threads}


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    """For benchmarks/run.py: GPT-2-small and the default variants (quick: 2 layers of d 256,
    whole against tiec, one round; a few minutes, most of it the compiler's fixed start-up)."""
    if quick:
        return measure(config(QUICK_SIZES, step_rounds=4), ["whole", "tiec"], rounds=1, steady=True)
    return measure(config(SIZES), list(DEFAULT_VARIANTS), rounds=2, steady=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=SIZES["layers"])
    parser.add_argument("--d", type=int, default=SIZES["d"])
    parser.add_argument("--heads", type=int, default=SIZES["heads"])
    parser.add_argument("--vocab", type=int, default=SIZES["vocab"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="cold-start processes per variant (0: none)")
    parser.add_argument("--steps", type=int, default=5, help="steps timed in each cold process")
    parser.add_argument("--step-rounds", type=int, default=8, help="interleaved rounds in the steady process")
    parser.add_argument("--steps-per-round", type=int, default=2, help="steps of each variant per round")
    parser.add_argument("--no-steady", action="store_true", help="skip the steady-state process")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--module", choices=("emitted", "reference"), default="emitted",
                        help="what the tiec variants compile (reference: the hand-written stand-in)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=None, help="folder for compile_cold.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--steady", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or args.steady:
        cfg = json.loads(args.config)
        result = cold_worker(args.worker, cfg) if args.worker else steady_worker(args.steady.split(","), cfg)
        print(json.dumps(result))
        return 0
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    sizes = {"layers": args.layers, "d": args.d, "heads": args.heads, "vocab": args.vocab, "context": SIZES["context"]}
    cfg = config(sizes, args.batch, args.seq, args.steps, args.step_rounds, args.steps_per_round, args.module,
                 args.threads)
    start = time.perf_counter()
    figures, extra = measure(cfg, variants, args.rounds, not args.no_steady)
    print_table(f"compile_cold  ({time.perf_counter() - start:.0f} s)", figures)
    print(f"   -> {write_json('compile_cold', figures, extra.pop('settings'), extra, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
