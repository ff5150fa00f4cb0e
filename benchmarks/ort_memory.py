"""onnxruntime's memory for a model: RSS growth of an `InferenceSession` per unique parameter byte.

Each file is loaded in a fresh process: RSS is read after importing onnxruntime and numpy, then
after creating the session and running it once (batch 1: 8 tokens, or one vector). Weights are
inline (external data would be mapped from the file, and pages a Gather never touches would not
count). Two figures per file: the growth of anonymous memory (`RssAnon`: what the session
allocates; the headline) and of all RSS (`VmRSS`, which also counts onnxruntime's own code as its
kernels are first paged in, ~10 MiB however big the model). Session options: onnxruntime's
defaults, and prepacking off (`session.disable_prepacking`), under which a MatMul or Gemm reads
its weight where it lies instead of keeping a repacked copy per node. The latency figure is the
median run time (1 × 128 tokens, or 16 vectors) with prepacking off over the default's. The baseline is
`torch.onnx.export(dynamo=True, external_data=False)` of the hand-written reference holding the
same weights. For each file, the initializers that onnxruntime's optimizer adds (from the model it
saves at the default level) are listed: a copy of a weight shows there.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from common import Figure, failure
from onnx_size import quiet
from references import EXAMPLES, Albert, GPT2Small, TiedLM

GOAL = 1.25
OPTIONS = {"default": {}, "no prepack": {"session.disable_prepacking": "1"}}
RECOMMENDED = "no prepack"


class TiedAutoencoder(nn.Module):
    """examples/tied_autoencoder.tie at any width, written by hand: dec reads enc.weight.T."""

    def __init__(self, n: int, hidden: int):
        super().__init__()
        self.enc = nn.Linear(n, hidden)
        self.dec = nn.Module()
        self.dec.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return torch.sigmoid(nn.functional.linear(torch.relu(self.enc(x)), self.enc.weight.t(), self.dec.bias))


def _autoencoder_spec(n: int, hidden: int) -> str:
    text = (EXAMPLES / "tied_autoencoder.tie").read_text(encoding="utf-8")
    return text.replace("784", str(n)).replace("256", str(hidden))


# name → (spec text or file, model, overrides, reference(config), input)
MODELS = {
    "tied_lm": ("tied_lm.tie", "TiedLM", {"vocab": 50257, "d": 768}, lambda c: TiedLM(c["vocab"], c["d"]), "tokens"),
    "gpt2_small": ("gpt2_small.tie", "GPT2Small", {}, lambda c: GPT2Small(**{k: c[k] for k in (
        "vocab", "context", "d", "heads", "layers")}), "tokens"),
    "albert": ("albert.tie", "Albert", {}, lambda c: Albert(**{k: c[k] for k in (
        "vocab", "e", "d", "heads", "ffn", "layers", "max_len")}), "tokens"),
    "tied_autoencoder": (_autoencoder_spec(8192, 4096), "TiedAutoencoder", {}, lambda c: TiedAutoencoder(8192, 4096),
                         "vector"),
}


def child(path: str, options: str) -> None:
    """In a fresh process: the session's RSS growth after one run, and its median run time."""
    import time

    import numpy as np
    import onnxruntime as ort

    def status() -> dict[str, int]:
        with open("/proc/self/status") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)
                    if k in ("VmRSS", "RssAnon")}

    so = ort.SessionOptions()
    for key, value in OPTIONS[options].items():
        so.add_session_config_entry(key, value)
    before = status()
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()

    def feed(rows: int) -> dict:
        if "int64" in inp.type:
            return {inp.name: np.arange(rows, dtype=np.int64).reshape(1, rows)}
        return {inp.name: np.random.default_rng(0).random((rows // 8, inp.shape[1]), dtype=np.float32)}

    session.run(None, feed(8))  # 1 × 8 tokens, or 1 vector: the activations stay small beside the weights
    after = status()
    times, big = [], feed(128)  # timed on 1 × 128 tokens, or 16 vectors
    for _ in range(10):
        start = time.perf_counter()
        session.run(None, big)
        times.append(time.perf_counter() - start)
    print(json.dumps({"anon": after["RssAnon"] - before["RssAnon"], "rss": after["VmRSS"] - before["VmRSS"],
                      "run_s": sorted(times)[len(times) // 2]}))


def measure_file(path: Path, options: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), options], capture_output=True, text=True,
                         check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def added_initializers(path: Path, workdir: Path) -> list[dict]:
    """Initializers of more than 1 kB that onnxruntime's optimizer (default level) adds to the file."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(workdir / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    original = {t.name for t in onnx.load(str(path), load_external_data=False).graph.initializer}
    optimized = onnx.load(so.optimized_model_filepath)
    (workdir / "optimized.onnx").unlink()
    added = [{"name": t.name, "dims": list(t.dims), "bytes": len(t.raw_data)} for t in optimized.graph.initializer
             if t.name not in original and len(t.raw_data) > 1024]
    return sorted(added, key=lambda a: -a["bytes"])


def measure(name: str, layers: int | None, workdir: Path) -> tuple[list[Figure], dict]:
    import tiec

    spec, model, overrides, make_reference, kind = MODELS[name]
    overrides = {**overrides, **({"layers": layers} if layers else {})} or None
    program = (tiec.load(EXAMPLES / spec, overrides) if spec.endswith(".tie")
               else tiec.loads(spec, overrides, filename=f"{name}.tie"))
    unique = program.stats()["models"][model]["unique_bytes"]
    compiled = program.torch(model, seed=0).eval()
    files = {"tiec": workdir / "tiec.onnx", "dynamo": workdir / "dynamo.onnx"}
    program.onnx(files["tiec"], model, weights=compiled)
    reference = make_reference(dict(program.ir.models[model].config)).eval()
    reference.load_state_dict(compiled.state_dict(), strict=True)
    args = (torch.arange(8).reshape(1, 8),) if kind == "tokens" else (torch.rand(1, 8192),)
    figures, details = [], {"unique_bytes": unique, "overrides": overrides or {}}
    try:
        with quiet():
            torch.onnx.export(reference, args, str(files["dynamo"]), dynamo=True, external_data=False, opset_version=18,
                              dynamic_shapes=({0: "B", 1: "T"} if kind == "tokens" else {0: "B"},))
    except Exception as e:  # noqa: BLE001 - the baseline's failure is a result to report
        figures.append(failure(f"{name}: dynamo", e))
        files.pop("dynamo")
    del compiled, reference
    base = "unique param bytes"
    for exporter, path in files.items():
        d = details[exporter] = {"file_bytes": path.stat().st_size, "onnxruntime_adds": added_initializers(path, workdir)}
        for options in OPTIONS:
            try:
                m = d[options] = measure_file(path, options)
            except Exception as e:  # noqa: BLE001 - keep the other figures
                figures.append(failure(f"{name}: {exporter}, {options}", e))
                continue
            goal = GOAL if exporter == "tiec" and options == RECOMMENDED else None
            figures.append(Figure(f"{name}: {exporter}, {options}", m["anon"] / unique, goal, "<=", base,
                                  note=f"all RSS {m['rss'] / unique:.3f}x; run {m['run_s'] * 1e3:.1f} ms", details=m))
        if all(o in d for o in OPTIONS):
            figures.append(Figure(f"{name}: {exporter}, run time {RECOMMENDED} / default",
                                  d[RECOMMENDED]["run_s"] / d["default"]["run_s"], None, "<=", "default options"))
        adds = d["onnxruntime_adds"]
        if adds:
            figures[-1].note = (f"onnxruntime's optimizer adds {len(adds)} initializer(s), "
                                f"{sum(a['bytes'] for a in adds) / unique:.3f}x: {adds[0]['name']} {adds[0]['dims']}")
    return figures, details


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    """Every model of `MODELS`; `quick` uses gpt2_small with 2 layers instead of 12."""
    figures, details = [], {}
    for name in MODELS:
        layers = 2 if quick and name == "gpt2_small" else None
        with tempfile.TemporaryDirectory(prefix=f"tiec-bench-ortmem-{name}-") as tmp:
            try:
                figs, details[name] = measure(name, layers, Path(tmp))
            except Exception as e:  # noqa: BLE001 - keep the other models' figures
                figs = [failure(f"{name}: tiec", e, GOAL)]
        figures.extend(figs)
    return figures, {"settings": {"gpt2_small_layers": 2 if quick else 12, "options": OPTIONS,
                                  "recommended": RECOMMENDED}, "models": details}


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(sys.argv[2], sys.argv[3])
