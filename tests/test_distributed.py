"""Data-parallel training of tiec modules: FSDP2 units from `tiec.distributed.plan`, and DDP.

The plans are checked directly. The training runs (marked `distributed`; `-m "not distributed"`
leaves them out) happen in one job of two gloo ranks on 127.0.0.1 (`tests/distributed_worker.py`,
killed past `TIMEOUT_S`); each test reads one run's results: 3 SGD steps on half a batch per rank
must give, gathered to full tensors, the parameters single-process training gives on the whole
batch, the same on both ranks, with every share group still one tensor.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import tiec
from tests.distributed_worker import CASES, SMALL_ALBERT, SMALL_GPT2, kinds
from tiec.distributed import Models, fully_shard, plan

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 120
TOL = 1e-5

PLANS = {
    "albert": [["layer"], [""]],
    "gpt2": [["h.0"], ["h.1"], [""]],  # lm_head shares wte.weight: both in the root
    "multitask": [[""]],  # no blocks: fc2 aliased across models and the tied fc1s are all in the root
    "tied_autoencoder": [[""]],
    "cross_transposed": [[""]],
    "two_towers": [["A.t", "B.t"], [""]],  # one unit for the one tower of two models
    "deep": [["h.0", "h.1"], ["h.2"], [""]],  # h.3 holds a tied bias, read by tie_penalty: in the root
    "nested": [["o.0.c"], ["o.1.c"], ["o.0"], ["o.1"], [""]],  # o.i.a is read by o.i's forward: in o.i
}

# every block is read outside its forward: o.0 by a transposed layer, o.0 and o.1 in expressions
# of the model's forward, s by tie_penalty; none can be a unit of its own
READ_OUTSIDE = """
block Inner(d) {
    in x: [B, d]
    fc = Linear(d, d)
    return fc(x) @ fc.weight.T
}
model M(d = 4) {
    in x: [B, d]
    repeat 2 {
        o = Inner(d)
        x = o(x)
        y = x @ o.fc.weight
    }
    repeat 2 share { s = Inner(d); x = s(x) }
    t = Inner(d)
    x = t(x)
    e = Linear(d, d)
    dec = Linear(d, d) share weight = o[0].fc.weight.T
    tie(0.5) o[1].fc.bias, s.fc.bias
    return dec(e(x)) + y @ o[1].fc.weight.T
}
"""


@pytest.mark.parametrize("name", sorted(PLANS))
def test_plan(name):
    case = CASES[name]
    assert plan(case.load(), case.model) == PLANS[name]


def test_plan_keeps_blocks_read_outside_their_forward_in_the_root():
    assert plan(tiec.loads(READ_OUTSIDE)) == [["t"], [""]]


def test_plan_of_every_model_and_of_the_all_models_module():
    program = tiec.load(EXAMPLES / "deep_shared.tie")
    assert plan(program, "DeepShared") == [["blk"], [""]]
    assert plan(program, "Deep") == [[f"blk.{i}"] for i in range(6)] + [[""]]
    assert plan(program) == [[f"Deep.blk.{i}"] for i in range(6)] + [["DeepShared.blk"], [""]]
    assert plan(tiec.load(EXAMPLES / "gpt2_small.tie", SMALL_GPT2), "GPT2Small") == plan(
        tiec.load(EXAMPLES / "gpt2_small.tie", SMALL_GPT2))


def test_plan_names_the_models_it_knows():
    with pytest.raises(ValueError, match="no model named 'TaskC' in .*multitask.tie; models: TaskA, TaskB"):
        plan(tiec.load(EXAMPLES / "multitask.tie"), "TaskC")


def test_fully_shard_names_the_modules_it_takes():
    program = tiec.load(EXAMPLES / "albert.tie", SMALL_ALBERT)
    with pytest.raises(TypeError, match="Linear is not a module of .*albert.tie: expected one of Albert"):
        fully_shard(torch.nn.Linear(2, 2), program=program)


def test_models_runs_the_models_it_is_given():
    both = tiec.load(EXAMPLES / "multitask.tie").torch()
    x = torch.randn(3, 784)
    out = Models(both)(TaskB=x)
    assert list(out) == ["TaskB"] and torch.equal(out["TaskB"], both.TaskB(x))
    assert torch.equal(Models(both).tie_penalty(), both.tie_penalty())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(folder: Path, world: int = 2) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    loopback = [n for _, n in socket.if_nameindex() if n.startswith("lo")]
    if loopback:  # gloo would otherwise pick the interface the host name resolves to
        env.setdefault("GLOO_SOCKET_IFNAME", loopback[0])
    port = _free_port()
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(open(folder / f"rank{r}.log", "w", encoding="utf-8")) for r in range(world)]
        procs = [subprocess.Popen([sys.executable, "-m", "tests.distributed_worker", str(r), str(world), str(port),
                                   str(folder)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                 for r, log in enumerate(logs)]
        deadline = time.monotonic() + TIMEOUT_S
        try:
            for p in procs:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            for p in procs:  # past the deadline, or after a failure of the parent
                if p.poll() is None:
                    p.kill()
                    p.wait()
    files = [folder / f"rank{r}.pt" for r in range(world)]
    if not all(f.exists() for f in files) or any(p.returncode for p in procs):
        tails = "\n".join(f"--- rank {r} (exit {p.returncode}):\n" + (folder / f"rank{r}.log").read_text()[-3000:]
                          for r, p in enumerate(procs))
        pytest.fail(f"the distributed job did not finish within {TIMEOUT_S} s or failed:\n{tails}", pytrace=False)
    return [torch.load(f, weights_only=False) for f in files]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[dict]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch has no gloo backend")
    return _launch(tmp_path_factory.mktemp("distributed"))


@pytest.mark.distributed
@pytest.mark.parametrize(("name", "kind"), [(name, kind) for name in CASES for kind in kinds(name)])
def test_training_matches_one_process(runs, name, kind):
    results = [r[name, kind] for r in runs]
    for rank, res in enumerate(results):
        assert "error" not in res, f"rank {rank}:\n{res['error']}"
        assert res["keys_match"] and res["moved"] > 1e-2
        assert res["diff"] < TOL, f"rank {rank}: {res['diff']:.3g} from single-process training"
        assert res["sharing"], f"rank {rank}: a share group is no longer one tensor"
        assert res["unique"][0] == res["unique"][1]
    first, second = (res["state"] for res in results)
    agree = max((first[k] - second[k]).abs().max().item() for k in first)
    assert agree < TOL, f"the ranks differ by {agree:.3g}"
    if kind == "ddp_compiled" and name == "gpt2":  # the tied lookup and head of the eager rest
        assert results[0]["tied_rest"] == ["lm_head", "wte"]
    if kind == "fsdp":
        want = [path for unit in PLANS[name][:-1] for path in unit]
        assert sorted(results[0]["fsdp_modules"]) == sorted(want) and results[0]["fsdp_root"]
