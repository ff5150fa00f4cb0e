"""int8 export (`tiec export --quantize int8`): size and accuracy per example, against float.

For each model, the same fresh weights (PyTorch's initialisation, seed 0) are exported in float
and with `quantize="int8"`; onnxruntime runs both files on the same inputs. Figures:
- the int8 file's bytes over its int8 tensors, scales and float biases (1.0 is the limit; goal
  ≤ 1.01, nothing stored twice, for models of 1 MiB of int8 or more);
- the int8 file's bytes over the float file's (≈ 0.25 when the matrices dominate);
- the accuracy: max |int8 output − float output| / max |float output|.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from common import Figure, failure
from references import EXAMPLES, example_inputs

SIZE_GOAL = 1.01
GOAL_FROM = 2**20  # int8 bytes: below, the graph's own ~2.5 kB is more than 1 % (reported, no goal)
# name → (spec, model, overrides, inputs like references.example_inputs)
MODELS = {
    "tied_lm": ("tied_lm.tie", "TiedLM", {"vocab": 50257, "d": 768}),
    "tied_lm_explicit": ("tied_lm.tie", "TiedLMExplicit", {"vocab": 50257, "d": 768}),
    "albert": ("albert.tie", "Albert", None),
    "gpt2_small": ("gpt2_small.tie", "GPT2Small", None),
    "tied_autoencoder": ("tied_autoencoder.tie", "TiedAutoencoder", None),
    "siamese": ("siamese.tie", "Siamese", None),
    "deep_shared": ("deep_shared.tie", "DeepShared", None),
    "multitask": ("multitask.tie", "TaskA", None),
}


def _inputs(name: str, program, model: str) -> tuple:
    import torch

    if name in ("albert", "gpt2_small", "tied_autoencoder", "siamese"):
        return example_inputs(name, program, 2, 16)
    g = torch.Generator().manual_seed(0)
    config = dict(program.ir.models[model].config)
    if "vocab" in config:
        return (torch.randint(0, config["vocab"], (2, 16), generator=g),)
    (inp,) = program.ir.models[model].inputs
    return (torch.rand(2, *inp.type.shape[1:], generator=g),)


def _run(path: Path, args: tuple) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})[0]


def measure(name: str, layers: int | None, workdir: Path) -> tuple[list[Figure], dict]:
    import tiec

    spec, model, overrides = MODELS[name]
    overrides = {**(overrides or {}), **({"layers": layers} if layers else {})} or None
    program = tiec.load(EXAMPLES / spec, overrides)
    module = program.torch(model, seed=0).eval()
    floats = program.onnx(workdir / "f.onnx", model, weights=module)
    info = program.onnx(workdir / "q.onnx", model, weights=module, quantize="int8")
    q = info["quantized"]
    args = _inputs(name, program, model)
    want, got = _run(workdir / "f.onnx", args), _run(workdir / "q.onnx", args)
    error = float(np.abs(got - want).max() / np.abs(want).max())
    limit = q["int8_bytes"] + q["scale_bytes"] + q["float_bytes_kept"]
    details = {"overrides": overrides or {}, "float_bytes": floats["bytes"], "int8_bytes": info["bytes"],
               "quantized": {k: v for k, v in q.items() if k != "tensors"}, "tensors": len(q["tensors"]),
               "relative_error": error}
    return [
        Figure(f"{name}: int8 file / its int8 + scales + float", info["bytes"] / limit,
               SIZE_GOAL if q["int8_bytes"] >= GOAL_FROM else None, "<=",
               "int8 tensors, scales, float biases", note=f"{len(q['tensors'])} int8 tensors", details=details),
        Figure(f"{name}: int8 file / float file", info["bytes"] / floats["bytes"], None, "<=", "float export",
               note=f"{info['bytes']:,} B vs {floats['bytes']:,} B"),
        Figure(f"{name}: max |int8 - float| / max |float|", error, None, "<=", "float outputs",
               note=f"largest weight error {q['max_abs_error']:.3g}"),
    ], details


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    """Every model of `MODELS`; `quick` uses gpt2_small with 2 layers instead of 12."""
    figures, details = [], {}
    for name in MODELS:
        layers = 2 if quick and name == "gpt2_small" else None
        with tempfile.TemporaryDirectory(prefix=f"tiec-bench-int8-{name}-") as tmp:
            try:
                figs, details[name] = measure(name, layers, Path(tmp))
            except Exception as e:  # noqa: BLE001 - keep the other models' figures
                figs = [failure(f"{name}: int8", e, SIZE_GOAL)]
        figures.extend(figs)
    return figures, {"settings": {"gpt2_small_layers": 2 if quick else 12}, "models": details}
