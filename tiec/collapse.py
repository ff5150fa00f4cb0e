"""Collapse for deployment: tie groups whose trained members ended up close become one shared tensor.

Rule: a tie group of the model (not one tied to an anchor, which is no parameter to share) is
collapsed when every member, read as the tie orients it (`b.T` transposed), lies within `eps` of
the members' mean r̄ in relative Frobenius norm: max_i ‖r_i − r̄‖ / ‖r̄‖ ≤ eps (an all-zero mean
only when every member is zero). Such a group is never collapsed above `eps`; nor is a group that
shares a tensor with one collapsed before it (the two means would disagree), nor one the sharing
rules refuse (a member that cannot be read transposed). The collapsed spec turns each collapsed
tie into a share (`share a, b.T`), so every backend sees an ordinary share group: one tensor,
holding r̄, one ONNX initializer; the remaining ties stay ties. The report gives every group's
distance, the size saved (unique parameters and bytes, before and after) and the largest change
of any output on seeded sample inputs (the original module against the collapsed one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from tiec.compiler import ir, sharing
from tiec.compiler.verify import verify
from tiec.dsl.diagnostics import TieError

SAMPLE_SIZE = 2  # every symbolic dim of a sample input (B, T, …)


@dataclass
class GroupResult:
    id: int
    members: list[str]  # local names, `.T` for a member read transposed
    distance: float | None  # max relative distance to the mean (None: not measured)
    collapsed: bool
    reason: str  # why it was collapsed or kept

    def as_json(self) -> dict:
        return {"id": self.id, "members": self.members, "distance": self.distance, "collapsed": self.collapsed,
                "reason": self.reason}


@dataclass
class Collapsed:
    """What `collapse` found and built: the collapsed program and module, and the figures."""

    program: Any  # tiec.api.Program of the collapsed spec
    module: Any  # its nn.Module, holding the collapsed weights
    model: str
    eps: float
    groups: list[GroupResult] = field(default_factory=list)
    before: dict = field(default_factory=dict)  # unique_params, unique_bytes of the original
    after: dict = field(default_factory=dict)
    output_change: float = 0.0  # max |y − y'| over outputs and sample inputs
    relative_change: float = 0.0  # that, over max |y|
    samples: int = 0

    def as_json(self) -> dict:
        return {"model": self.model, "eps": self.eps, "groups": [g.as_json() for g in self.groups],
                "before": self.before, "after": self.after, "saved_params": self.before["unique_params"] -
                self.after["unique_params"], "saved_bytes": self.before["unique_bytes"] - self.after["unique_bytes"],
                "max_output_change": self.output_change, "max_relative_change": self.relative_change,
                "samples": self.samples}


def distance(tensors: list) -> float:
    """max_i ‖r_i − r̄‖ / ‖r̄‖ over float64 copies (0 when all are zero, inf when only the mean is)."""
    import torch

    stack = torch.stack([t.detach().double() for t in tensors])
    mean = stack.mean(0)
    spread = max(float(torch.linalg.vector_norm(t - mean)) for t in stack)
    norm = float(torch.linalg.vector_norm(mean))
    if norm == 0:
        return 0.0 if spread == 0 else math.inf
    return spread / norm


def collapse(program, weights: Any, eps: float, model: str | None = None, samples: int = 4,
             seed: int = 0) -> Collapsed:
    """Collapse `model`'s tie groups within `eps` (see the module docstring).

    Args:
        program: a `tiec.api.Program`.
        weights: the trained weights: a checkpoint path (safetensors or `torch.save`), a state dict or a module.
        eps: the largest relative distance to collapse, a finite number ≥ 0.
        model: the model (required when the file has several).
        samples: sample inputs on which the output change is measured.
        seed: seeds the sample inputs.

    Returns:
        A `Collapsed`: write it with `write`.
    """
    import torch

    from tiec import weights as w
    from tiec.api import Program

    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")
    if not 1 <= samples <= 1000:
        raise ValueError(f"samples must be 1 to 1000, got {samples}")
    name = program._model(model, required=True)
    state = w.state_dict(w.Scope(program.ir, name), program._state(weights, name))
    original = program.torch(name)
    original.load_state_dict(state, strict=True)
    params = dict(original.named_parameters(remove_duplicate=False))
    binds = ir.bindings(program.ir, name)
    result = Collapsed(None, None, name, float(eps))
    chosen, taken = [], set()
    for tie in ir.ties(program.ir, name):
        members = [m.param + (".T" if m.transposed else "") for m in tie.members]
        if tie.anchors:
            result.groups.append(GroupResult(tie.id, members, None, False, "tied to an anchor: nothing to share"))
            continue
        tensors = [_read(params, binds, m) for m in tie.members]
        d = distance(tensors)
        tensor_ids = {binds[m.param].canonical for m in tie.members}
        if d > eps:
            result.groups.append(GroupResult(tie.id, members, d, False, f"{d:.3g} > eps: kept as a tie"))
        elif tensor_ids & taken:
            result.groups.append(GroupResult(tie.id, members, d, False,
                                             "shares a tensor with a group collapsed before it: kept as a tie"))
        else:
            chosen.append((tie, tensors))
            taken |= tensor_ids
            result.groups.append(GroupResult(tie.id, members, d, True, f"{d:.3g} ≤ eps: one tensor"))
    collapsed_ir = _collapsed_ir(program.ir, name, [t for t, _ in chosen], result)
    new = Program(collapsed_ir, program.path)
    module = new.torch(name)
    new_params = dict(module.named_parameters(remove_duplicate=False))
    new_binds = ir.bindings(collapsed_ir, name)
    with torch.no_grad():
        for key, b in new_binds.items():  # every tensor as trained, then each collapsed group's mean
            if b.canonical == key and key in new_params:
                new_params[key].copy_(params[binds[key].canonical].T if binds[key].transposed else
                                      params[binds[key].canonical])
        for tie, tensors in chosen:
            if any(g.id == tie.id and g.collapsed for g in result.groups):
                mean = torch.stack([t.detach().double() for t in tensors]).mean(0)
                head = tie.members[0].param
                b = new_binds[head]
                target = new_params[b.canonical]
                target.copy_((mean.T if b.transposed else mean).to(target.dtype))
    result.program, result.module = new, module
    result.before = _size(program.ir, name)
    result.after = _size(collapsed_ir, name)
    result.samples = samples
    result.output_change, result.relative_change = _output_change(program.ir, name, original, module, samples, seed)
    return result


def _read(params: dict, binds: dict, m: ir.Member):
    b = binds[m.param]
    t = params[b.canonical]
    return t.T if b.transposed != m.transposed else t


def _collapsed_ir(program: ir.ProgramIR, model: str, ties: list[ir.TieGroup], result: Collapsed) -> ir.ProgramIR:
    """The program with each of `ties` a share instead; a group the sharing rules refuse stays a tie."""
    accepted: list[ir.TieGroup] = []
    for tie in ties:
        trial = _solve(program, model, [*accepted, tie])
        if isinstance(trial, TieError):
            for g in result.groups:
                if g.id == tie.id:
                    g.collapsed, g.reason = False, f"cannot be one tensor: {trial.message}"
            continue
        accepted.append(tie)
    out = _solve(program, model, accepted)
    assert not isinstance(out, TieError)
    verify(out)
    return out


def _solve(program: ir.ProgramIR, model: str, ties: list[ir.TieGroup]) -> ir.ProgramIR | TieError:
    ids = {t.id for t in ties}
    shares = list(program.share_requests)
    for tie in ties:
        head = tie.members[0]
        for m in tie.members[1:]:
            shares.append(ir.ShareRequest(ir.qualify(model, head.param), ir.qualify(model, m.param), m.transposed,
                                          tie.span, head.span, m.span))
    kept = tuple(r for i, r in enumerate(program.tie_requests, start=1) if i not in ids)
    try:
        return sharing.run(replace(program, share_requests=tuple(shares), tie_requests=kept, warnings=()))
    except TieError as e:
        return e


def _size(program: ir.ProgramIR, model: str) -> dict:
    from tiec.compiler.stats import model_stats

    s = model_stats(program, model)
    return {"unique_params": s["unique_params"], "unique_bytes": s["unique_bytes"], "tensors": s["tensors"]}


def sample_inputs(program: ir.ProgramIR, model: str, count: int, seed: int) -> list[list]:
    """`count` seeded inputs of the model's types: symbols of size 2, floats normal, integers 0 or 1
    (an index every Embedding holds), bools either."""
    import torch

    from tiec.anchors import TORCH_DTYPES

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        row = []
        for inp in program.structure[model].inputs:
            shape = [d if isinstance(d, int) else SAMPLE_SIZE for d in inp.type.shape]
            dtype = inp.type.dtype
            if dtype in TORCH_DTYPES:
                row.append(torch.randn(shape, generator=g).to(getattr(torch, TORCH_DTYPES[dtype])))
            elif dtype == "bool":
                row.append(torch.randint(0, 2, shape, generator=g).bool())
            else:
                row.append(torch.randint(0, 2, shape, generator=g, dtype=getattr(torch, {"i32": "int32",
                                                                                         "i64": "int64"}[dtype])))
        out.append(row)
    return out


def _output_change(program, model, original, module, count: int, seed: int) -> tuple[float, float]:
    import torch

    worst, scale = 0.0, 0.0
    original.eval()
    module.eval()
    with torch.no_grad():
        for row in sample_inputs(program, model, count, seed):
            a, b = original(*row), module(*row)
            for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                worst = max(worst, float((x.double() - y.double()).abs().max()))
                scale = max(scale, float(x.double().abs().max()))
    return worst, (worst / scale if scale else 0.0)


def write(result: Collapsed, onnx_path: str, weights_path: str, opset: int = 18) -> dict:
    """Write the collapsed weights (safetensors: one tensor per share group) and ONNX (one initializer
    per group). Both are checked before either is written, and each appears whole or not at all."""
    from tiec import weights as w

    scope = w.Scope(result.program.ir, result.model)
    w.resolve(scope, result.module.state_dict(), allow_nonfinite=True)  # the weights save will accept
    info = result.program.onnx(onnx_path, result.model, weights=result.module, opset=opset, allow_nonfinite=True)
    saved = result.program.save(result.module, weights_path, result.model, allow_nonfinite=True)
    return {"onnx": info, "weights": saved}


def report_lines(result: Collapsed) -> list[str]:
    """The readable report of `tiec collapse`."""
    done = [g for g in result.groups if g.collapsed]
    lines = [f"collapsed {len(done)} of {len(result.groups)} tie group(s) of {result.model} (eps {result.eps:g}):"]
    for g in result.groups:
        d = "-" if g.distance is None else f"{g.distance:.3g}"
        lines.append(f"  #{g.id} {' ~ '.join(g.members)}: distance {d}: {g.reason}")
        if g.collapsed:
            lines.append(f"      now: share {', '.join(g.members)}")
    b, a = result.before, result.after
    saved = b["unique_bytes"] - a["unique_bytes"]
    share = f" ({saved / b['unique_bytes']:.1%})" if b["unique_bytes"] else ""
    lines.append(f"unique parameters {b['unique_params']:,} → {a['unique_params']:,}; bytes {b['unique_bytes']:,} → "
                 f"{a['unique_bytes']:,}, {saved:,} saved{share}")
    lines.append(f"largest output change on {result.samples} sample input(s): {result.output_change:.3g} "
                 f"(relative to the largest output value: {result.relative_change:.3g})")
    return lines


def cli_run(program, args) -> int:
    """`tiec collapse FILE --weights W --eps E -o OUT.onnx [--weights-out OUT.safetensors]`."""
    import json
    import os

    from tiec.output import check_output

    weights_out = args.weights_out or os.path.splitext(args.output)[0] + ".safetensors"
    check_output(weights_out)
    for path in (args.file, args.weights, args.output):
        if os.path.abspath(weights_out) == os.path.abspath(path):
            from tiec.dsl.diagnostics import Source, Span

            raise TieError(f"cannot write {weights_out}: it is the input or output file {path}",
                           Span(Source(weights_out, ""), 0, 0, 0, 0), hint="pass another --weights-out")
    result = collapse(program, args.weights, args.eps, args.model, args.samples, args.seed)
    info = write(result, args.output, weights_out, args.opset)
    if args.json:
        print(json.dumps({**result.as_json(), "onnx_bytes": info["onnx"]["bytes"],
                          "weights_bytes": info["weights"]["bytes"]}, indent=2))
    else:
        print("\n".join(report_lines(result)))
        print(f"wrote {args.output}: {info['onnx']['bytes']:,} bytes, {info['onnx']['initializers']} initializers; "
              f"{weights_out}: {info['weights']['bytes']:,} bytes, {info['weights']['tensors']} tensors")
    return 0
