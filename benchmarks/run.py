"""Run tiec's benchmarks: `python benchmarks/run.py [--quick] [--only NAME ...] [--out DIR]`.

Each benchmark module has `run(quick) -> (figures, extra)`; this prints one table per benchmark
and writes `benchmarks/results/<name>.json`. Every figure is a ratio against a baseline measured
in the same process. `--quick` uses smaller sizes and fewer repeats (a few minutes on 2 cores).
On a machine with CUDA, benchmarks/gpu.py runs last (as a separate process).
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import RESULTS, Figure, failure, print_table, write_json

BENCHMARKS = ("memory", "onnx_size", "onnx_tools", "ort_memory", "onnx_quantize", "dedup", "export_memory", "export_time", "tie_penalty", "tie_kinds", "compile_scaling", "structure", "forward", "llama", "gru", "examples", "compile_cold")


def run_one(name: str, quick: bool, out: Path) -> list[Figure]:
    """Run benchmark `name`, print its table and write its JSON; an exception becomes a failed figure."""
    start = time.perf_counter()
    try:
        figures, extra = importlib.import_module(name).run(quick=quick)
    except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the others
        traceback.print_exc()
        figures, extra = [failure(name, e)], {"traceback": traceback.format_exc()}
    elapsed = time.perf_counter() - start
    print_table(f"{name}  ({elapsed:.0f} s{', quick' if quick else ''})", figures)
    settings = {"quick": quick, **extra.pop("settings", {})}
    path = write_json(name, figures, settings, {**extra, "wall_s": elapsed}, out)
    print(f"   -> {path}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--only", action="append", choices=BENCHMARKS + ("gpu",), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}, gpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON files go")
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    summary: list[tuple[str, Figure]] = []
    for name in names:
        if name == "gpu":
            continue
        summary += [(name, f) for f in run_one(name, args.quick, args.out)]
    if "gpu" in names or (args.only is None and _cuda()):
        cmd = [sys.executable, str(HERE / "gpu.py"), "--out", str(args.out / "gpu.json")] + (["--quick"] if args.quick else [])
        print(f"\n$ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=False)
    goals = [(n, f) for n, f in summary if f.goal is not None or f.error]
    missed = [(n, f) for n, f in goals if f.met is not True]
    print(f"\n{len(goals) - len(missed)}/{len(goals)} goals met" + (":" if not missed else "; missed:"))
    for n, f in missed:
        value = f"{f.value:.4g}" if f.error is None else f.error
        print(f"  {n}: {f.name} = {value}" + (f" (goal {f.direction} {f.goal:g})" if f.goal is not None else ""))
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
