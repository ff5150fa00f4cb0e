"""ONNX size: bytes on disk per byte of unique parameters, tiec against torch.onnx.export.

Figure: (every file an exporter writes, external data included) / (unique parameter bytes from
`program.stats()`). 1.0 is the physical limit: each tensor stored once and nothing else. The
baselines export the hand-written reference holding the same weights, with the dynamo exporter
and with the TorchScript one; they may store a tied weight twice (once as is, once folded into
a transposed constant), which is what this figure shows. An exporter that fails is recorded.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import torch

from common import Figure, failure
from references import MODELS, example_inputs, load_compiled, reference_for

GOALS = {"albert": 1.0005, "gpt2_small": 1.0005}  # no goal for the small models: fixed overhead dominates
NAMES = ("albert", "gpt2_small", "tied_autoencoder", "siamese")


def directory_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


@contextlib.contextmanager
def quiet():
    """Silence exporters' progress lines and warnings so the tables stay readable."""
    import logging
    import warnings

    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def torch_export(module: torch.nn.Module, args: tuple, path: Path, dynamo: bool) -> None:
    """`torch.onnx.export` of `module` in eval mode (dynamo: weights in external data, as by default)."""
    module.eval()
    with quiet():
        torch.onnx.export(module, args, str(path), dynamo=dynamo, opset_version=18)


def onnxruntime_diff(path: Path, module: torch.nn.Module, args: tuple) -> float | None:
    """Largest |ORT − torch| over the outputs of the file at `path` (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    got = session.run(None, feeds)[0]
    with torch.no_grad():
        want = module.eval()(*args)
    return float(abs(torch.from_numpy(got) - want).max())


EXPORTERS = {"torch dynamo": True, "torch torchscript": False}  # label → torch.onnx.export(dynamo=…)


def measure(name: str, overrides: dict | None, workdir: Path,
            exporters: tuple[str, ...] = tuple(EXPORTERS)) -> tuple[list[Figure], dict]:
    """Figures for one example: tiec, then each of `exporters` (labels of `EXPORTERS`)."""
    program, compiled = load_compiled(name, overrides)
    model = MODELS[name][1]
    unique = program.stats()["models"][model]["unique_bytes"]
    ref = reference_for(name, program, compiled)
    args = example_inputs(name, program, 2, 8)
    base = "unique param bytes (1.0 = limit)"
    figures, details = [], {"unique_bytes": unique, "overrides": overrides or {}}

    out = workdir / "tiec"
    out.mkdir()
    report = program.onnx(out / f"{name}.onnx", model, weights=compiled)
    size = directory_bytes(out)
    details["tiec"] = {"bytes": size, "report": report}
    try:
        details["tiec"]["onnxruntime_max_abs_diff"] = onnxruntime_diff(out / f"{name}.onnx", compiled, args)
    except Exception as e:  # noqa: BLE001 - a size figure stands without the check; record why it failed
        details["tiec"]["onnxruntime_error"] = f"{type(e).__name__}: {e}"[:300]
    shutil.rmtree(out)
    figures.append(Figure(f"{name}: tiec", size / unique, GOALS.get(name), "<=", base,
                          note=f"{size - unique:+,d} B over the weights", details=details["tiec"]))

    for label in exporters:
        dynamo = EXPORTERS[label]
        out = workdir / label.replace(" ", "_")
        out.mkdir()
        try:
            torch_export(ref, args, out / f"{name}.onnx", dynamo)
            size = directory_bytes(out)
            details[label] = {"bytes": size}
            figures.append(Figure(f"{name}: {label}", size / unique, None, "<=", base,
                                  note=f"{size - unique:+,d} B over the weights", details=details[label]))
        except Exception as e:  # noqa: BLE001 - an exporter's failure is a result to report
            figures.append(failure(f"{name}: {label}", e, None, "<=", base))
            details[label] = {"error": figures[-1].error}
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return figures, details


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    """All examples; `quick` exports gpt2_small with 2 layers instead of 12 (a ~200 MB file, not ~500 MB)."""
    figures, details = [], {}
    for name in NAMES:
        overrides = {"layers": 2} if quick and name == "gpt2_small" else None
        with tempfile.TemporaryDirectory(prefix=f"tiec-bench-{name}-") as tmp:
            try:
                figs, details[name] = measure(name, overrides, Path(tmp))
            except Exception as e:  # noqa: BLE001 - keep the other models' figures
                figs = [failure(f"{name}: tiec", e, GOALS.get(name))]
        figures.extend(figs)
    return figures, {"settings": {"gpt2_small_layers": 2 if quick else 12}, "models": details}
