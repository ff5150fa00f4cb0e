"""What the fuzz worker checks for each input (runs in the child process; see `worker.py`).

- "examine": the text, saved as `fuzz.tie`, goes through `tiec check` (the CLI, in process) and
  `tiec.load`; a program that compiles is built by every backend: `torch()` and `python()` for
  the program and for each model, and `onnx()` for each model. Each step must succeed or raise a
  located `TieError` (`fuzz.tie:L:C: error: …`, or `fuzz.tie: error: …` for a file-level one);
  the CLI must agree with the API (status 0 with no error, 1 with the same first line). Each
  model is then run (`run.py`): torch must give the checker's types, onnxruntime the same values.
- "differential" (a valid spec and its generator's `expect`): the live module, the emitted
  source (executed, given the live state dict) and onnxruntime compute the same outputs (the
  first two exactly, onnxruntime to rtol 1e-3 / atol 1e-5); the unique tensors (by data pointer)
  and their sizes are the generator's count, as is `stats()`'s; the ONNX file has one initializer
  per tensor, one per share group, and its manifest lists the generator's groups and orientations.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import traceback

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tiec.compiler import ir
from tiec.dsl.diagnostics import TieError

import tiec
from tiec.cli import main as cli

from .run import options, outputs, run_model
from .worker import Outcome

FILE = "fuzz.tie"
LOCATED = re.compile(rf"{re.escape(FILE)}(:\d+:\d+)?: (error|warning): ")
MAX_BUILD_PARAMS = 2**22  # a spec may ask for more; building it tests the allocator, not tiec


def warm_up() -> None:
    torch.set_num_threads(1)
    handle({"mode": "examine", "text": "model M {\n    in x: [B, 2]\n    fc = Linear(2, 2)\n    return fc(x)\n}\n"})


def handle(request: dict) -> Outcome:
    mode = request["mode"]
    try:
        if mode == "examine":
            return examine(request["text"])
        return differential(request["text"], request["expect"])
    except MemoryError:
        return Outcome("bad", "memory", traceback.format_exc(limit=-8))
    except Exception as e:  # noqa: BLE001 - every other escape is the finding
        return Outcome("bad", type(e).__name__, traceback.format_exc(limit=-8))


def _unlocated(e: TieError) -> Outcome | None:
    text = e.render()
    if not LOCATED.match(text):
        return Outcome("bad", "unlocated", text)
    return None


def examine(text: str) -> Outcome:
    with open(FILE, "w", encoding="utf-8", errors="surrogatepass", newline="") as f:
        f.write(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli(["check", FILE])
    try:
        program = tiec.load(FILE)
    except TieError as e:
        first = e.render().split("\n", 1)[0]
        if status != 1 or first not in err.getvalue().split("\n"):
            return Outcome("bad", "cli", f"`tiec check` exits {status}, the API raises {first!r}:\n{err.getvalue()}")
        return _unlocated(e) or Outcome("diagnostic", detail=first)
    if status != 0:
        return Outcome("bad", "cli", f"the API compiles it, `tiec check` exits {status}:\n{err.getvalue()}")
    for w in program.warnings:
        if not LOCATED.match(w.render()):
            return Outcome("bad", "unlocated", w.render())
    if sum(math.prod(p.shape) for m in program.models for p in ir.declared_params(program.ir, m)) > MAX_BUILD_PARAMS:
        return Outcome("ok", detail="too large to build")
    ran = False
    try:
        for model in (None, *program.models):
            program.torch(model)
            program.python(model)
        for model in program.models:
            module = program.torch(model).eval()
            program.onnx("fuzz.onnx", model=model, weights=module)
            found = run_model(program, model, module, "fuzz.onnx")
            if isinstance(found, Outcome):
                return found
            ran |= found
    except TieError as e:
        return _unlocated(e) or Outcome("diagnostic", detail="backend: " + e.render().split("\n", 1)[0])
    return Outcome("ok", detail="run in both backends" if ran else "")


def _differs(what: str, got, want) -> Outcome:
    return Outcome("bad", "differential", f"{what}: got {got}, want {want}")


def differential(text: str, expect: dict) -> Outcome:
    try:
        program = tiec.loads(text, filename=FILE)
    except TieError as e:
        return Outcome("bad", "rejected", e.render())
    live = program.torch("M").eval()
    namespace: dict = {}
    exec(compile(program.python("M"), "emitted.py", "exec"), namespace)  # noqa: S102 - the source under test
    emitted = namespace[type(live).__name__]().eval()
    emitted.load_state_dict(live.state_dict())
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randint(0, i["high"], i["shape"], generator=gen) if i["dtype"] == "i64"
          else torch.randn(*i["shape"], generator=gen) for i in expect["inputs"]]
    with torch.no_grad():
        want, got = outputs(live(*xs)), outputs(emitted(*xs))
        if len(want) != len(got) or not all(torch.equal(a, b) for a, b in zip(want, got)):
            return _differs("emitted module's outputs", got, want)
        if not torch.equal(live.tie_penalty(), emitted.tie_penalty()):
            return _differs("emitted module's tie penalty", emitted.tie_penalty(), live.tie_penalty())
    tensors = {t.data_ptr(): t.numel() for t in live.state_dict().values()}
    counted = (len(tensors), sum(tensors.values()), len(list(live.parameters())))
    if counted != (expect["tensors"], expect["numel"], expect["tensors"]):
        return _differs("(tensors, values, parameters())", counted, (expect["tensors"], expect["numel"]))
    if program.stats()["models"]["M"]["unique_params"] != expect["numel"]:
        return _differs("stats unique_params", program.stats()["models"]["M"]["unique_params"], expect["numel"])
    program.onnx("fuzz.onnx", model="M", weights=live)
    proto = onnx.load("fuzz.onnx")
    inits = {t.name for t in proto.graph.initializer if not t.name.startswith("~")}
    if len(inits) != expect["tensors"]:
        return _differs("ONNX parameter initializers", sorted(inits), expect["tensors"])
    manifest = json.loads({p.key: p.value for p in proto.metadata_props}["tiec.groups"])
    groups = sorted(_oriented(g) for g in expect["groups"])
    found = sorted(_oriented([(m["param"], m["transposed"]) for m in g["members"]]) for g in manifest["share_groups"])
    if found != groups:
        return _differs("ONNX manifest share groups", found, groups)
    for g in expect["groups"]:
        if sum(key in inits for key, _ in g) != 1:
            return _differs(f"initializers among group {g}", sorted(inits & {k for k, _ in g}), "one")
    session = ort.InferenceSession("fuzz.onnx", options(), providers=["CPUExecutionProvider"])
    outs = session.run(None, {i["name"]: x.numpy() for i, x in zip(expect["inputs"], xs)})
    for o, w in zip(outs, want):
        if o.dtype != w.numpy().dtype or o.shape != tuple(w.shape) or not np.allclose(o, w.numpy(), rtol=1e-3,
                                                                                      atol=1e-5):
            return _differs("onnxruntime's outputs", o, w)
    return Outcome("ok")


def _oriented(group: list) -> list[tuple[str, bool]]:
    """(member, transposed) relative to the alphabetically first member, whatever the flags were
    relative to (the manifest's to the canonical member, the generator's to its own root)."""
    flags = dict(group)
    first = flags[min(flags)]
    return sorted((key, flag != first) for key, flag in flags.items())
