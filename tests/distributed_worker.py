"""One rank of the distributed tests: `python -m tests.distributed_worker RANK WORLD PORT OUT`.

For each case and each wrapper (FSDP2 through `tiec.distributed.fully_shard`, DDP with its
default, `find_unused_parameters` and `static_graph` settings, and for ALBERT and GPT-2 DDP over
the module after `tiec.compile`) it trains 3 SGD steps on this
rank's half of a fixed batch, and, without any process group, the same module on the whole batch.
It saves, in `OUT/rank<RANK>.pt`, per run: the parameters gathered to full tensors, the largest
difference from the single-process run, whether each share group is still one tensor, the FSDP
modules it made, and the error if the run raised.
"""
from __future__ import annotations

import datetime
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tiec.compiler import ir
from torch import nn

import tiec
import tiec.compile
from tiec.api import Program
from tiec.distributed import Models, fully_shard

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STEPS, LR, BATCH = 3, 0.1, 4

CROSS_TRANSPOSED = """
model Enc {
    in x: [B, 6]
    enc = Linear(6, 4)
    return enc(x)
}
model Dec {
    in z: [B, 4]
    dec = Linear(4, 6)
    return dec(z)
}
share Enc.enc.weight, Dec.dec.weight.T
"""

# two models whose towers are one: a unit of two blocks in different models
TWO_TOWERS = """
block Tower(d) {
    in x: [B, d]
    fc = Linear(d, d)
    return relu(fc(x))
}
model A(d = 4) {
    in x: [B, d]
    t = Tower(d)
    head = Linear(d, 2)
    return head(t(x))
}
model B(d = 4) {
    in x: [B, d]
    t = Tower(d)
    head = Linear(d, 3)
    return head(t(x))
}
share A.t, B.t
"""

# blocks sharing a layer (one unit for two copies) and a block tied to a root layer (in the root)
DEEP = """
block Layer(d) {
    in x: [B, d]
    up = Linear(d, 2 * d)
    down = Linear(2 * d, d)
    return x + down(relu(up(x)))
}
model Deep(d = 8) {
    in x: [B, d]
    pre = Linear(d, d)
    x = pre(x)
    repeat 4 {
        h = Layer(d)
        x = h(x)
    }
    share h[0].up, h[1].up
    tie(0.1) h[3].down.bias, pre.bias
    out = Linear(d, 4)
    return out(x)
}
"""

# a block inside a block: the outer reads the inner `a`'s weight in an expression (one unit),
# the inner `c` is a unit of its own, inside the outer's
NESTED = """
block Inner(d) {
    in x: [B, d]
    fc = Linear(d, d)
    return relu(fc(x))
}
block Outer(d) {
    in x: [B, d]
    a = Inner(d)
    c = Inner(d)
    return c(a(x)) + x @ a.fc.weight.T
}
model Nested(d = 4) {
    in x: [B, d]
    repeat 2 {
        o = Outer(d)
        x = o(x)
    }
    return x
}
"""


@dataclass(frozen=True)
class Case:
    load: Callable[[], Program]
    model: str | None  # None: the all-models module, run through `Models`
    inputs: dict[str, Callable[[torch.Generator], torch.Tensor]]  # model (or input) name → batch
    outputs: dict[str, Callable[[torch.Generator], torch.Tensor]]  # model name → target batch;
    # a tensor target: mean over samples of the squared error; an integer one: cross-entropy


def _tokens(g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 50, (BATCH, 8), generator=g)


def _randn(*shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randn(BATCH, *shape, generator=g)


def _classes(n: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randint(0, n, (BATCH,), generator=g)


SMALL_ALBERT = {"vocab": 50, "e": 8, "d": 16, "heads": 2, "ffn": 32, "layers": 2, "max_len": 16}
SMALL_GPT2 = {"vocab": 50, "context": 16, "d": 16, "heads": 2, "layers": 2}
CASES: dict[str, Case] = {
    "albert": Case(lambda: tiec.load(EXAMPLES / "albert.tie", SMALL_ALBERT), "Albert",
                   {"tokens": _tokens}, {"Albert": _tokens}),
    "gpt2": Case(lambda: tiec.load(EXAMPLES / "gpt2_small.tie", SMALL_GPT2), "GPT2Small",
                 {"tokens": _tokens}, {"GPT2Small": _tokens}),
    "multitask": Case(lambda: tiec.load(EXAMPLES / "multitask.tie"), None,
                      {"TaskA": _randn(784), "TaskB": _randn(784)}, {"TaskA": _classes(10), "TaskB": _classes(10)}),
    "tied_autoencoder": Case(lambda: tiec.load(EXAMPLES / "tied_autoencoder.tie"), "TiedAutoencoder",
                             {"x": _randn(784)}, {"TiedAutoencoder": lambda g: torch.rand(BATCH, 784, generator=g)}),
    "cross_transposed": Case(lambda: tiec.loads(CROSS_TRANSPOSED, filename="cross.tie"), None,
                             {"Enc": _randn(6), "Dec": _randn(4)}, {"Enc": _randn(4), "Dec": _randn(6)}),
    "two_towers": Case(lambda: tiec.loads(TWO_TOWERS, filename="towers.tie"), None,
                       {"A": _randn(4), "B": _randn(4)}, {"A": _randn(2), "B": _classes(3)}),
    "deep": Case(lambda: tiec.loads(DEEP, filename="deep.tie"), "Deep", {"x": _randn(8)}, {"Deep": _randn(4)}),
    "nested": Case(lambda: tiec.loads(NESTED, filename="nested.tie"), "Nested", {"x": _randn(4)},
                   {"Nested": _randn(4)}),
}
KINDS = ("fsdp", "ddp", "ddp_find_unused", "ddp_static_graph")
# also trained under DDP with their blocks compiled by `tiec.compile` (aot_eager: no C++ compiler)
COMPILED = ("albert", "gpt2")


def kinds(name: str) -> tuple[str, ...]:
    return KINDS + (("ddp_compiled",) if name in COMPILED else ())


def _loss(out: dict, targets: dict) -> torch.Tensor:
    total = torch.zeros(())
    for name, target in targets.items():
        if target.is_floating_point():
            total = total + ((out[name] - target) ** 2).flatten(1).sum(1).mean()
        else:
            total = total + F.cross_entropy(out[name].flatten(0, -2), target.flatten())
    return total


def _call(case: Case, root: nn.Module, inputs: dict) -> dict:
    if case.model is None:
        return root(**inputs)
    return {case.model: root(*inputs.values())}


def _train(case: Case, root: nn.Module, penalty: Callable[[], torch.Tensor], inputs: dict, targets: dict,
           params) -> None:
    opt = torch.optim.SGD(params, lr=LR)
    for _ in range(STEPS):
        loss = _loss(_call(case, root, inputs), targets) + penalty()
        loss.backward()
        opt.step()
        opt.zero_grad()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _sharing_kept(program: Program, model: str | None, module: nn.Module) -> bool:
    """Aliased slots are one parameter object; transposed ones still read their owner's tensor."""
    ok = True
    for key, b in ir.bindings(program.ir, model).items():
        if b.group is None or key == b.canonical:
            continue
        if b.transposed:
            reader = module.get_submodule(key.rpartition(".")[0])
            owner, _, slot = b.canonical.rpartition(".")
            ok &= reader.owner[0] is module.get_submodule(owner) and reader.owner[1] == slot
            ok &= torch.equal(_full(reader.weight), _full(module.get_parameter(b.canonical)).T)
        else:
            ok &= module.get_parameter(key) is module.get_parameter(b.canonical)
    return ok


def _distributed(kind: str, case: Case, program: Program, local: list[dict]) -> tuple[nn.Module, dict]:
    """Train a fresh module under `kind`; the module and what to report about the wrapping."""
    module = program.torch(case.model, seed=0)
    if kind == "fsdp":
        from torch.distributed.fsdp import FSDPModule

        root = fully_shard(module, program=program)
        _train(case, root, root.tie_penalty, *local, root.parameters())
        return module, {"fsdp_modules": [n for n, m in module.named_modules() if isinstance(m, FSDPModule) and n],
                        "fsdp_root": isinstance(root, FSDPModule)}
    from torch.nn.parallel import DistributedDataParallel

    report = {}
    if kind == "ddp_compiled":
        tiec.compile(module, backend="aot_eager")
        report["tied_rest"] = sorted(n for n, m in module.named_modules() if type(m).__module__ == "tiec.tied_rest")
    root = Models(module) if case.model is None else module
    options = {"ddp_find_unused": {"find_unused_parameters": True}, "ddp_static_graph": {"static_graph": True}}
    ddp = DistributedDataParallel(root, **options.get(kind, {}))
    _train(case, ddp, root.tie_penalty, *local, ddp.parameters())
    return module, report


def run(case_name: str, case: Case, rank: int, world: int) -> dict[str, dict]:
    """Every kind of run of `case`, by kind."""
    program = case.load()
    g = torch.Generator().manual_seed(1234)
    batch = [{k: make(g) for k, make in d.items()} for d in (case.inputs, case.outputs)]
    half = BATCH // world
    local = [{k: v[rank * half:(rank + 1) * half] for k, v in d.items()} for d in batch]
    initial = program.torch(case.model, seed=0).state_dict()
    reference = program.torch(case.model, seed=0)
    _train(case, Models(reference) if case.model is None else reference, reference.tie_penalty, *batch,
           reference.parameters())
    want = reference.state_dict()
    results = {}
    for kind in kinds(case_name):
        try:
            module, out = _distributed(kind, case, program, local)
            state = {k: _full(v).detach().clone() for k, v in module.state_dict().items()}
            out.update(state=state, keys_match=sorted(state) == sorted(want),
                       diff=max((state[k] - want[k]).abs().max().item() for k in want),
                       moved=max((want[k] - v).abs().max().item() for k, v in initial.items()),
                       sharing=_sharing_kept(program, case.model, module),
                       unique=(len(list(module.parameters())), len(list(reference.parameters()))))
        except Exception:  # noqa: BLE001 - reported per run; the other runs still go
            out = {"error": traceback.format_exc()}
        results[kind] = out
        dist.barrier()
    return results


def main(rank: int, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    # a rank left alone (its peer failed) gives up on a rendezvous or collective after a minute
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for name, case in CASES.items():
            for kind, out in run(name, case, rank, world).items():
                results[name, kind] = out
    finally:
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
