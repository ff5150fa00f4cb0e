"""ONNX after downstream tools: file bytes per unique parameter byte, at the examples' real sizes.

tiec's file for each model is run through onnxsim, onnxslim, onnxoptimizer (default passes) and
onnxruntime's graph optimizer at each level (the optimized model it saves). Figure: (bytes of
the processed file) / (unique parameter bytes from `program.stats()`); 1.0 is the physical limit.
A tool that folds a `Transpose(initializer)` into a constant stores that weight twice (≈ 2.0 for a
tied LM). The note gives the initializers' bytes over the unique bytes (1.000: no copy) and the
number of initializers; below 1.000, a tool merged byte-equal tensors (fresh LayerNorms are all
ones). A tool that fails is recorded, not fatal.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

from common import Figure, failure
from onnx_size import quiet
from references import EXAMPLES

GOALS = {"albert": 1.001, "gpt2_small": 1.001}  # the small models' graphs outweigh 0.1 % of their weights
# name → (spec, model, overrides): tied_lm at GPT-2's vocabulary and width
MODELS = {
    "tied_lm": ("tied_lm.tie", "TiedLM", {"vocab": 50257, "d": 768}),
    "albert": ("albert.tie", "Albert", None),
    "gpt2_small": ("gpt2_small.tie", "GPT2Small", None),
    "tied_autoencoder": ("tied_autoencoder.tie", "TiedAutoencoder", None),
    "siamese": ("siamese.tie", "Siamese", None),
}


def _onnxsim(path: Path, out: Path) -> None:
    import onnxsim

    model, ok = onnxsim.simplify(str(path))
    if not ok:
        raise RuntimeError("onnxsim's check of the simplified model failed")
    onnx.save(model, str(out))


def _onnxslim(path: Path, out: Path) -> None:
    import onnxslim

    onnxslim.slim(str(path), str(out))


def _onnxoptimizer(path: Path, out: Path) -> None:
    import onnxoptimizer

    onnx.save(onnxoptimizer.optimize(onnx.load(str(path))), str(out))


def _onnxruntime(level: str):
    def run(path: Path, out: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    return run


TOOLS = {"onnxsim": _onnxsim, "onnxslim": _onnxslim, "onnxoptimizer": _onnxoptimizer,
         "ort basic": _onnxruntime("BASIC"), "ort extended": _onnxruntime("EXTENDED"), "ort all": _onnxruntime("ALL")}


def initializer_bytes(path: Path) -> tuple[int, int]:
    """(bytes of every initializer's values, number of initializers) of the ONNX file at `path`."""
    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer), len(model.graph.initializer)


def measure(name: str, layers: int | None, workdir: Path) -> tuple[list[Figure], dict]:
    import tiec

    spec, model, overrides = MODELS[name]
    overrides = {**(overrides or {}), **({"layers": layers} if layers else {})} or None
    program = tiec.load(EXAMPLES / spec, overrides)
    unique = program.stats()["models"][model]["unique_bytes"]
    source = workdir / f"{name}.onnx"
    program.onnx(source, model, seed=0)
    base = "unique param bytes (1.0 = limit)"
    figures, details = [], {"unique_bytes": unique, "overrides": overrides or {}}
    rows = [("tiec", source)]
    for tool, run in TOOLS.items():
        out = workdir / f"{name}.{tool.replace(' ', '_')}.onnx"
        try:
            with quiet():
                run(source, out)
            rows.append((tool, out))
        except Exception as e:  # noqa: BLE001 - a tool's failure is a result to report
            figures.append(failure(f"{name}: {tool}", e, GOALS.get(name), "<=", base))
            details[tool] = {"error": figures[-1].error}
    for tool, path in rows:
        size = path.stat().st_size
        init, count = initializer_bytes(path)
        details[tool] = {"bytes": size, "initializer_bytes": init, "initializers": count}
        figures.append(Figure(f"{name}: {tool}", size / unique, GOALS.get(name), "<=", base,
                              note=f"initializers {init / unique:.4f}x in {count}", details=details[tool]))
        if path != source:
            path.unlink()
    return figures, details


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    """Every model of `MODELS`; `quick` exports gpt2_small with 2 layers instead of 12."""
    figures, details = [], {}
    for name in MODELS:
        layers = 2 if quick and name == "gpt2_small" else None
        with tempfile.TemporaryDirectory(prefix=f"tiec-bench-tools-{name}-") as tmp:
            try:
                figs, details[name] = measure(name, layers, Path(tmp))
            except Exception as e:  # noqa: BLE001 - keep the other models' figures
                figs = [failure(f"{name}: tiec", e, GOALS.get(name))]
        figures.extend(figs)
        del figs
    return figures, {"settings": {"gpt2_small_layers": 2 if quick else 12}, "models": details,
                     "table": _table(details)}


def _table(details: dict) -> dict[str, dict[str, float]]:
    """model → tool → file bytes / unique bytes, for the JSON."""
    return {name: {tool: round(d["bytes"] / models["unique_bytes"], 4) for tool, d in models.items()
                   if isinstance(d, dict) and "bytes" in d}
            for name, models in details.items()}

