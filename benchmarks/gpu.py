"""GPU benchmark: ALBERT compiled by tiec / the hand-written reference, eager and under torch.compile.

    python benchmarks/gpu.py [--device cuda|cpu] [--quick] [--backend inductor] [--out FILE]

Needs only torch and tiec (plus this folder's common.py and references.py, and the example
specs). Figures, each the median of interleaved runs with the device synchronised around every
timed call:

- forward (eval, inference_mode) and forward+backward (train) ratios, eager;
- the same with both modules under `torch.compile(fullgraph=True)`: a graph break raises, and
  is reported as that figure's error instead of a number;
- sharing survives `.to(device)`: for every example, parameters that were one tensor on the CPU
  (same `data_ptr`) are one tensor on the device, the number of distinct tensors is unchanged,
  and their bytes equal `stats()`'s unique bytes.

`--device cpu` runs the same logic on the CPU (a dry run for machines without a GPU; pair it with
`--backend eager` or `aot_eager` to check for graph breaks without a C++ toolchain).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from common import Figure, alternate, failure, print_table, write_json
from references import EXAMPLES, check_same, example_inputs, load_compiled, reference_for

GOAL_FORWARD, GOAL_TRAIN = 1.02, 1.03


def sync_for(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else None


def inference(module, args, inner: int):
    def go():
        with torch.inference_mode():
            for _ in range(inner):
                module(*args)
    return go


def train_step(module, args, inner: int):
    def go():
        for _ in range(inner):
            module.zero_grad(set_to_none=True)
            module(*args).float().mean().backward()
    return go


def timing_figures(label: str, ref, compiled, args, rounds: int, inner: int, device) -> list[Figure]:
    """Eval-forward and train-step ratios compiled/reference, interleaved."""
    base = f"hand-written reference, {label}"
    figs = []
    for mode, make, goal in (("forward (eval)", inference, GOAL_FORWARD), ("forward+backward", train_step, GOAL_TRAIN)):
        train = make is train_step
        ref.train(train)
        compiled.train(train)
        try:
            pair = alternate(make(ref, args, inner), make(compiled, args, inner), rounds, warmup=2, sync=sync_for(device))
        except Exception as e:  # noqa: BLE001 - a graph break or a compile error is this figure's result
            figs.append(failure(f"albert {mode}, {label}", e, goal, "<=", base))
            continue
        figs.append(Figure(f"albert {mode}, {label}", pair.paired_ratio, goal, "<=", base,
                           note=f"rounds {pair.spread()}; {inner} calls per timing", details=pair.summary()))
    return figs


def compile_checked(name: str, module, args, backend: str):
    """(figure, compiled module or None): `torch.compile(fullgraph=True)`, run once in eval mode
    and once as a train step, so both graphs exist before timing. A graph break raises; it is
    reported (first line of the error) as the figure's error, and the module is not timed."""
    label = f"{name}: torch.compile(fullgraph=True)"
    try:
        compiled = torch.compile(module, fullgraph=True, backend=backend)
        compiled.eval()
        with torch.inference_mode():
            compiled(*args)
        compiled.train()
        compiled(*args).float().mean().backward()
        module.zero_grad(set_to_none=True)
        return Figure(label, 1.0, 1.0, "==", "compiles without graph breaks", note=f"backend={backend}, eval and train"), compiled
    except Exception as e:  # noqa: BLE001 - report the break instead of stopping
        return failure(label, e, 1.0, "==", "compiles without graph breaks"), None


def alias_groups(module: torch.nn.Module) -> dict[int, tuple[str, ...]]:
    """data_ptr → the parameter names that are that tensor (aliases included)."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(p.data_ptr(), []).append(name)
    return {ptr: tuple(names) for ptr, names in groups.items()}


def sharing_figures(device: torch.device) -> list[Figure]:
    """Each example's shares are still one tensor after `.to(device)`; bytes equal stats."""
    import tiec

    figs = []
    for path in sorted(EXAMPLES.glob("*.tie")):
        overrides = {"layers": 2} if path.stem == "gpt2_small" else None
        try:
            program = tiec.load(path, overrides)
            module = program.torch()
            before = sorted(alias_groups(module).values())
            module = module.to(device)
            after = sorted(alias_groups(module).values())
            storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for _, p in
                        module.named_parameters(remove_duplicate=False)}
            want = program.stats()["program"]["unique_bytes"]
            same = before == after and all(p.device.type == device.type for p in module.parameters())
            aliased = sum(1 for g in after if len(g) > 1)
            figs.append(Figure(f"{path.stem}: shares after .to({device.type})", sum(storages.values()) / want if same else 0.0,
                               1.0, "==", "stats unique_bytes",
                               note=f"{len(after)} tensors ({aliased} aliased), same groups: {same}",
                               details={"groups_before": before, "groups_after": after, "bytes": sum(storages.values()),
                                        "stats_unique_bytes": want}))
            del module
        except Exception as e:  # noqa: BLE001
            figs.append(failure(f"{path.stem}: shares after .to({device.type})", e, 1.0, "=="))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return figs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="small input, few rounds")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager/aot_eager for a dry run)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: CUDA is not available (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    batch = args.batch or (2 if args.quick else 8)
    seq = args.seq or (32 if args.quick else 128)
    rounds = args.rounds or (3 if args.quick else 15)
    inner = 1 if device.type == "cpu" else (3 if args.quick else 10)  # GPU calls are short: time several

    program, compiled = load_compiled("albert")
    ref = reference_for("albert", program, compiled)
    compiled, ref = compiled.to(device), ref.to(device)
    inputs = tuple(a.to(device) for a in example_inputs("albert", program, batch, seq))
    diff = check_same(ref, compiled, inputs, atol=1e-3 if device.type == "cpu" else 5e-3)

    figures: list[Figure] = []
    figures += sharing_figures(device)
    figures += timing_figures("eager", ref, compiled, inputs, rounds, inner, device)
    fig_ref, compiled_ref = compile_checked("albert reference", ref, inputs, args.backend)
    fig_tiec, compiled_tiec = compile_checked("albert compiled by tiec", compiled, inputs, args.backend)
    figures += [fig_tiec, fig_ref]
    if compiled_ref is not None and compiled_tiec is not None:
        figures += timing_figures(f"torch.compile({args.backend}, fullgraph)", compiled_ref, compiled_tiec, inputs,
                                  rounds, inner, device)

    settings = {"device": str(device), "batch": batch, "seq": seq, "rounds": rounds, "inner": inner,
                "backend": args.backend, "quick": args.quick}
    print_table(f"gpu ({device})", figures)
    path = write_json(args.out.stem, figures, settings, {"max_abs_diff": diff}, args.out.parent)
    print(f"   -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
