"""Dedup: file bytes per unique parameter byte of ONNX files from other exporters, after each tool.

Inputs, both hand-written PyTorch models with a tied embedding (tests/references.py):
- "gpt2 torchscript": GPT-2 (12 layers; 2 with --quick) exported by `torch.onnx.export(dynamo=False)`,
  which stores the tied head twice: `wte.weight` for the Gather, its transpose for the MatMul
  (its unique bytes count the 16 rows of `wpe` that the trace keeps, not all 1024);
- "tied_lm onnxsim": the tied LM at GPT-2's vocabulary exported by the dynamo exporter and then
  folded by onnxsim, which turns `Transpose(embed.weight)` into a second initializer.
Tools, each on the same input file in the same run: `tiec dedup`, onnx-ir's
`DeduplicateInitializersPass`, onnxoptimizer's `eliminate_duplicate_initializer`. Figure: file
bytes ÷ unique parameter bytes (1.0 is the limit: each tensor once, nothing else); goal for tiec
≤ 1.001. The other tools merge byte-equal copies only, so a transposed copy stays with them.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import onnx
import torch

from common import Figure, failure
from onnx_size import quiet
from references import GPT2Small

GOAL = 1.001
GPT2_VOCAB = 50257
SEQ = 16  # the traced sequence length


def _unique_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())  # a tied parameter counts once


def gpt2_torchscript(path: Path, quick: bool) -> int:
    """Write the TorchScript export of GPT-2 to `path`; the unique bytes of the parameters it holds
    (the trace folds `wpe(arange(T))` into the T rows it reads, so only those rows of wpe count)."""
    torch.manual_seed(0)
    ref = GPT2Small(layers=2 if quick else 12).eval()
    tokens = torch.randint(0, GPT2_VOCAB, (1, SEQ))
    with quiet():  # not under no_grad: attention's fast path there has no TorchScript export
        torch.onnx.export(ref, (tokens,), str(path), dynamo=False, opset_version=18, input_names=["tokens"])
    wpe = ref.wpe.weight
    return _unique_bytes(ref) - (wpe.shape[0] - SEQ) * wpe.shape[1] * wpe.element_size()


def tied_lm_onnxsim(path: Path, quick: bool) -> int:
    """Write onnxsim's folding of the dynamo export of the tied LM to `path`; its unique bytes."""
    import onnxsim
    from tests.references import TiedLM  # importable once `references` has put the repository on the path

    torch.manual_seed(0)
    ref = TiedLM(vocab=GPT2_VOCAB, d=256 if quick else 768).eval()
    tokens = torch.randint(0, GPT2_VOCAB, (1, SEQ))
    raw = path.with_suffix(".raw.onnx")
    with quiet(), torch.no_grad():
        torch.onnx.export(ref, (tokens,), str(raw), dynamo=True, opset_version=18, external_data=False)
    simplified, ok = onnxsim.simplify(onnx.load(str(raw)))
    if not ok:
        raise RuntimeError("onnxsim could not check its simplified model")
    onnx.save(simplified, str(path))
    raw.unlink()
    return _unique_bytes(ref)


def _tiec(src: Path, dst: Path) -> dict:
    from tiec.backends.onnx.dedup import dedup_file

    report = dedup_file(src, dst)
    return {"merged": len(report["merges"]), "max_abs_diff": report["max_abs_diff"]}


def _onnx_ir(src: Path, dst: Path) -> dict:
    import onnx_ir as ir
    from onnx_ir.passes.common import DeduplicateInitializersPass

    model = ir.load(str(src))
    DeduplicateInitializersPass()(model)
    ir.save(model, str(dst))
    return {}


def _onnxoptimizer(src: Path, dst: Path) -> dict:
    import onnxoptimizer

    onnx.save(onnxoptimizer.optimize(onnx.load(str(src)), ["eliminate_duplicate_initializer"]), str(dst))
    return {}


TOOLS = {"tiec dedup": _tiec, "onnx-ir DeduplicateInitializersPass": _onnx_ir,
         "onnxoptimizer eliminate_duplicate_initializer": _onnxoptimizer}
INPUTS = {"gpt2 torchscript": gpt2_torchscript, "tied_lm onnxsim": tied_lm_onnxsim}


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    figures, details = [], {}
    base = "unique param bytes (1.0 = limit)"
    for label, make in INPUTS.items():
        with tempfile.TemporaryDirectory(prefix="tiec-bench-dedup-") as tmp:
            src = Path(tmp) / "in.onnx"
            try:
                unique = make(src, quick)
            except Exception as e:  # noqa: BLE001 - the other input's figures still stand
                figures.append(failure(f"{label}: input", e))
                continue
            size = src.stat().st_size
            details[label] = {"unique_bytes": unique, "input_bytes": size}
            figures.append(Figure(f"{label}: input", size / unique, None, "<=", base,
                                  note=f"{size - unique:+,d} B over the weights"))
            for tool, fn in TOOLS.items():
                dst = Path(tmp) / f"{tool.split()[0]}.onnx"
                start = time.perf_counter()
                try:
                    extra = fn(src, dst)
                except Exception as e:  # noqa: BLE001 - a tool's failure is a result to report
                    figures.append(failure(f"{label}: {tool}", e, GOAL if tool == "tiec dedup" else None, "<=", base))
                    continue
                out = sum(f.stat().st_size for f in Path(tmp).iterdir() if f.name.startswith(dst.stem))
                details[label][tool] = {"bytes": out, "seconds": time.perf_counter() - start, **extra}
                figures.append(Figure(f"{label}: {tool}", out / unique, GOAL if tool == "tiec dedup" else None,
                                      "<=", base, note=f"{out - unique:+,d} B over the weights",
                                      details=details[label][tool]))
    return figures, {"settings": {"gpt2_layers": 2 if quick else 12, "tied_lm_d": 256 if quick else 768},
                     "inputs": details}
