"""Export peak memory: the peak RSS of `tiec export` past 2 GiB, per unique parameter byte.

The model is the GPT-2 layout of examples/gpt2_small.tie at d 1600, 25 heads, 15 layers (2.17 GB of
unique parameters; 2 layers with --quick), which is past protobuf's 2 GiB, so the export writes
external data, streamed. Each figure is one fresh process, its peak RSS read as `VmHWM` (the
high-water mark of its own address space). Not `ru_maxrss`: Linux carries that over an exec from
the address space the child was forked from, so a child of a process that had grown (`run.py`
after the other memory benchmarks) reported the parent's 6 GiB as its own.
- "tiec export": `tiec export` with fresh weights, as a user runs it (goal ≤ 1.5× unique bytes);
- "build module" (the baseline): the same process up to building the module, which has to hold
  every weight once; the gap between the two is what the export itself costs.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Figure, failure
from references import EXAMPLES

GOAL = 1.5
SETTINGS = ["--set", "d=1600", "--set", "heads=25"]

CHILD = """
import json, resource, sys
from tiec import cli
mode, spec, out, *sets = sys.argv[1:]
if mode == "export":
    code = cli.main(["export", spec, "-o", out, "--quiet", *sets])
else:
    import tiec
    program = tiec.load(spec, {k: int(v) for k, v in (s.split("=") for s in sets[1::2])})
    module = program.torch()
    code = 0
try:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):  # not Linux: ru_maxrss, in bytes on macOS and kB elsewhere
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print(json.dumps({"code": code, "peak": peak}))
"""


def _peak(mode: str, spec: Path, out: Path, sets: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(spec), str(out), *sets],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed: {done.stderr[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise RuntimeError(f"{mode} exited {result['code']}: {done.stderr[-500:]}")
    return result


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    import tiec

    layers = 2 if quick else 15
    sets = [*SETTINGS, "--set", f"layers={layers}"]
    spec = EXAMPLES / "gpt2_small.tie"
    unique = tiec.load(spec, {"d": 1600, "heads": 25, "layers": layers}).stats()["models"]["GPT2Small"]["unique_bytes"]
    base = "unique param bytes"
    figures, details = [], {"unique_bytes": unique, "layers": layers}
    with tempfile.TemporaryDirectory(prefix="tiec-bench-export-memory-") as tmp:
        out = Path(tmp) / "gpt2.onnx"
        try:
            build = _peak("build", spec, out, sets)
            details["build_peak"] = build["peak"]
            figures.append(Figure("build module (baseline)", build["peak"] / unique, None, "<=", base,
                                  note=f"peak RSS {build['peak'] / 2**30:.2f} GiB"))
        except Exception as e:  # noqa: BLE001 - the export's figure stands without its baseline
            figures.append(failure("build module (baseline)", e))
            build = None
        try:
            export = _peak("export", spec, out, ["--external-data", *sets] if quick else sets)
            files = sorted(p.name for p in Path(tmp).iterdir())
            written = sum(p.stat().st_size for p in Path(tmp).iterdir())
            details.update(export_peak=export["peak"], files=files, bytes=written)
            note = f"peak RSS {export['peak'] / 2**30:.2f} GiB; wrote {', '.join(files)} ({written / 1e9:.2f} GB)"
            if build:
                note += f"; {export['peak'] / build['peak']:.2f}× the baseline"
            figures.append(Figure("tiec export (external data)", export["peak"] / unique, GOAL, "<=", base, note=note))
        except Exception as e:  # noqa: BLE001 - a failed export is the result to report
            figures.append(failure("tiec export (external data)", e, GOAL, "<=", base))
    return figures, {"settings": {"d": 1600, "heads": 25, "layers": layers}, **details}
