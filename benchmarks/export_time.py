"""Export time: `tiec export` (program.onnx with the module's weights) / torch.onnx.export(dynamo=True).

Both export ALBERT with the same weights: tiec from the compiled module, torch from the
hand-written reference holding that module's state dict. Rounds alternate one dynamo export
(slow: seconds) with several tiec exports; each side's figure is its median, both are warmed up
once (the first dynamo export also pays for imports and registry set-up, which is not billed).
A second figure adds the compile from source (`tiec.load` + onnx), as the CLI runs it.

Against the physical limit, writing the bytes: `program.onnx` of albert and gpt2_small (their
full sizes) / `safetensors.torch.save_file` of the same module's unique tensors, alternating,
goal ≤ 1.5.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import tiec

from common import Figure, alternate, failure
from onnx_size import torch_export
from references import EXAMPLES, MODELS, example_inputs, load_compiled, reference_for

GOAL = 0.05
GOAL_VS_SAVE = 1.5


def vs_safetensors(name: str, tmp: Path, rounds: int) -> Figure:
    """tiec's export of `name` against safetensors writing the same unique tensors."""
    from safetensors.torch import save_file

    program, compiled = load_compiled(name)
    model = MODELS[name][1]
    unique = {k: p.detach() for k, p in compiled.named_parameters()}  # each tensor once
    pair = alternate(lambda: save_file(unique, str(tmp / f"{name}.safetensors")),
                     lambda: program.onnx(tmp / f"{name}.onnx", model, weights=compiled), rounds)
    size = sum(p.numel() * p.element_size() for p in unique.values())
    return Figure(f"{name}: tiec export / safetensors save_file", pair.paired_ratio, GOAL_VS_SAVE, "<=",
                  "safetensors.torch.save_file of the unique tensors", note=f"{size / 2**20:.0f} MiB; "
                  f"rounds {pair.spread()}", details=pair.summary())


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    rounds, tiec_per_round = (2, 3) if quick else (3, 5)
    program, compiled = load_compiled("albert")
    model = MODELS["albert"][1]
    ref = reference_for("albert", program, compiled)
    args = example_inputs("albert", program, 2, 16)
    base = "torch.onnx.export(dynamo=True) of the reference"
    figures = []
    with tempfile.TemporaryDirectory(prefix="tiec-bench-export-") as tmp:
        tmp = Path(tmp)

        def dynamo():
            torch_export(ref, args, tmp / "torch.onnx", dynamo=True)

        def tiec_export():
            program.onnx(tmp / "tiec.onnx", model, weights=compiled)

        def tiec_cli():  # what `tiec export examples/albert.tie -o …` does after start-up
            fresh = tiec.load(EXAMPLES / MODELS["albert"][0])
            fresh.onnx(tmp / "tiec_cli.onnx", model, weights=compiled)

        try:
            pair = alternate(dynamo, tiec_export, rounds, candidate_per_round=tiec_per_round)
        except Exception as e:  # noqa: BLE001 - e.g. the dynamo exporter missing onnxscript
            return [failure("albert: tiec export / dynamo export", e, GOAL, "<=", base)], {}
        figures.append(Figure("albert: tiec export / dynamo export", pair.paired_ratio, GOAL, "<=", base,
                              note=f"rounds {pair.spread()}; {len(pair.baseline)} dynamo, {len(pair.candidate)} tiec runs",
                              details=pair.summary()))
        cli = alternate(dynamo, tiec_cli, 1 if quick else 2, warmup=0, candidate_per_round=tiec_per_round)
        figures.append(Figure("albert: tiec load+export / dynamo export", cli.paired_ratio, None, "<=", base,
                              note="compile from source included", details=cli.summary()))
        for name in ("albert", "gpt2_small"):
            figures.append(vs_safetensors(name, tmp, 2 if quick else 4))
    return figures, {"settings": {"rounds": rounds, "tiec_per_round": tiec_per_round, "input": "tokens [2, 16]"}}
