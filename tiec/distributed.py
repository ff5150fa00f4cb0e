"""Data-parallel training of tiec modules: FSDP2 units that keep every share group one tensor.

`plan(program, model)` lists the FSDP2 units for the module `program.torch(model)`, from the
IR; `fully_shard(module, program=program)` applies them with PyTorch's
`torch.distributed.fsdp.fully_shard` and returns the root to call. The rule (docs/distributed.md
has the measurements behind it):

- each block instance that the forward calls is its own unit (a `repeat N` block: one unit per
  copy; a `repeat N share` block: one unit, called N times);
- the layers holding one aliased tensor are in one unit: their units are merged into one
  `fully_shard([...])`, or, if one of them is outside every block, all of them join the root;
- a weight read outside its owner's forward (by a `Transposed…` layer, in an expression such as
  `embed.weight.T`, or by `tie_penalty()`, which runs as a forward of the root) is in the unit of
  the reader or of a unit enclosing it, else the owner's unit joins the reader's;
- a unit that joins the root takes its enclosing units with it, and the root module is wrapped
  last. Blocks that are never called are no units: their layers are in the enclosing unit.

The all-models module (`program.torch()` with several models) has no forward, and FSDP needs a
root whose forward runs, so `fully_shard` wraps it in `Models`, which runs models by name.
`DistributedDataParallel` needs a forward too: pass it `Models(program.torch())`.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tiec.compiler import ir, lower

if TYPE_CHECKING:
    from tiec.api import Program

ROOT = ""  # the module itself, as in `named_modules()`


class Models(nn.Module):
    """The all-models module with a forward: `root(TaskA=xa, TaskB=(xb, mask))` runs each named
    model on its inputs (a tensor or a tuple) and returns their outputs by name; models not named
    do not run. `tie_penalty()` is the wrapped module's."""

    def __init__(self, models: nn.Module):
        super().__init__()
        self.models = models

    def forward(self, **inputs: Any) -> dict[str, Any]:
        return {name: getattr(self.models, name)(*(args if isinstance(args, tuple) else (args,)))
                for name, args in inputs.items()}

    def tie_penalty(self) -> torch.Tensor:
        return self.models.tie_penalty()


def plan(program: Program, model: str | None = None) -> list[list[str]]:
    """The FSDP2 units `fully_shard` makes for `program.torch(model)`, in the order it makes them.

    Args:
        program: the compiled spec (`tiec.load(...)`).
        model: a model name; None means the module `program.torch()` builds (the all-models module
            when the spec has several models).

    Returns:
        One list of module paths per unit (paths as in `named_modules()`), bottom-up; the last is
        `[""]`, the root, which holds every parameter no other unit holds.
    """
    if model is None and len(program.ir.models) == 1:
        model = next(iter(program.ir.models))
    if model is not None and model not in program.ir.models:
        raise ValueError(f"no model named {model!r} in {program.path}; models: {', '.join(program.ir.models)}")
    return _Planner(program.ir, model).units()


def fully_shard(module: nn.Module, mesh: Any = None, *, program: Program, **fsdp_kwargs: Any) -> nn.Module:
    """Shard `module` (built by `program.torch(...)`) with FSDP2 along `plan(program, model)`.

    Args:
        module: a module from `program.torch()`, not yet sharded; it is sharded in place.
        mesh: the device mesh, as for `torch.distributed.fsdp.fully_shard` (None: every rank).
        program: the program the module was built from: the plan needs its IR (which weights a
            forward reads in expressions, which ones `tie_penalty` reads).
        **fsdp_kwargs: passed to every `torch.distributed.fsdp.fully_shard` call.

    Returns:
        The root to call: `module` itself, or, for the all-models module, `Models(module)`. Its
        `tie_penalty()` runs as an FSDP forward of the root, so it reads unsharded weights and
        its gradients are reduced with the rest.
    """
    model = _model_of(program, module)
    from torch.distributed.fsdp import fully_shard as shard
    from torch.distributed.fsdp import register_fsdp_forward_method

    *units, _ = plan(program, model)
    for unit in units:
        parts = [module.get_submodule(path) for path in unit]
        shard(parts if len(parts) > 1 else parts[0], mesh=mesh, **fsdp_kwargs)
    root = module if model is not None else Models(module)
    shard(root, mesh=mesh, **fsdp_kwargs)
    register_fsdp_forward_method(root, "tie_penalty")
    return root


def _model_of(program: Program, module: nn.Module) -> str | None:
    from tiec.backends.torch.codegen import class_names

    names = class_names(program.ir)
    if len(program.ir.models) == 1:
        names = {m: c for m, c in names.items() if m is not None}
    for model, cls in names.items():
        if type(module).__name__ == cls:
            return model
    raise TypeError(f"{type(module).__name__} is not a module of {program.path}: expected one of "
                    f"{', '.join(sorted(names.values()))} (from program.torch(...)), not yet sharded")


class _Planner:
    """Facts from the IR (block copies that run, aliased layers, reads of weights by forwards),
    then the constraints of the module docstring solved by merging units until none is broken."""

    def __init__(self, program: ir.ProgramIR, model: str | None):
        self.program = program
        models = [model] if model is not None else list(program.models)
        self.prefix = {m: "" if model is not None else f"{m}." for m in models}
        self.binds = ir.bindings(program, model)
        self.layer_of = {pre + p.name: pre + p.layer for m, pre in self.prefix.items()
                         for p in ir.declared_params(program, m)}  # parameter path → its layer's
        self.blocks: list[str] = []  # block copies that are called, as module paths
        self.reads: list[tuple[str, str]] = []  # (the module whose forward reads, parameter path)
        for m in models:
            self._walk(program.structure[m], self.prefix[m].rstrip("."))
        for key, b in self.binds.items():
            if b.transposed:  # a Transposed… layer reads its owner's weight in its own forward
                self.reads.append((self.layer_of[key], key))
        for tie in ir.ties(program, model):
            self.reads += [(ROOT, m.param) for m in tie.members]
        self.parent = {b: b for b in [ROOT, *self.blocks]}

    def _walk(self, sub: ir.Subgraph, path: str) -> None:
        called: dict[str, str] = {}
        for node, loops in _nodes(sub.body, {}):
            if node.op == "call":
                owner, inst, _ = ir.resolve_path(sub, node.attrs["instance"], self.program.blocks)
                if inst.block is None:  # a list run as a chain: each block child is a unit of its own
                    base = node.attrs["instance"][:-len(inst.name)]
                    called.update((base + p, c.block) for p, c in lower.children(owner, inst, node.attrs["children"])
                                  if c.block is not None)
                    continue
                block = sub.instance_map[node.attrs["instance"].partition(".")[0]].block or inst.block
                called.update((p, block) for p in _expand(sub, node.attrs["instance"], loops))
            elif node.op == "param":
                self.reads += [(path, _join(path, p)) for p in _expand(sub, node.attrs["param"], loops)]
        for copy, block in called.items():
            self.blocks.append(_join(path, copy))
            self._walk(self.program.blocks[block], _join(path, copy))

    def _owner(self, param: str) -> str:
        return self.layer_of[self.binds[param].canonical]

    def _home(self, path: str) -> str:
        """The innermost block copy holding the module at `path`, else the root."""
        inside = [b for b in self.blocks if path == b or path.startswith(b + ".")]
        return max(inside, key=len, default=ROOT)

    def find(self, b: str) -> str:
        while self.parent[b] != b:
            self.parent[b] = self.parent[self.parent[b]]
            b = self.parent[b]
        return b

    def union(self, a: str, *others: str) -> bool:
        """Merge the units of `a` and `others` (into the root if one is there); whether any changed."""
        changed = False
        for b in others:
            a, b = self.find(a), self.find(b)
            if a != b:
                a, b = (b, a) if b == ROOT else (a, b)
                self.parent[b] = a
                changed = True
        return changed

    def units(self) -> list[list[str]]:
        aliased: dict[str, set[str]] = {}
        for key, b in self.binds.items():
            if b.group is not None and not b.transposed:
                aliased.setdefault(b.canonical, set()).add(self.layer_of[key])
        changed = True
        while changed:
            changed = False
            for layers in aliased.values():
                homes = [self._home(layer) for layer in layers]
                changed |= self.union(*homes)
            for reader, param in self.reads:
                held = self.find(self._home(self._owner(param)))
                enclosing = {ROOT} | {self.find(b) for b in self.blocks if reader == b or reader.startswith(b + ".")}
                if held not in enclosing:
                    changed |= self.union(self._home(reader), held)
            for b in self.blocks:  # a copy in the root cannot sit inside a unit
                if self.find(b) == ROOT:
                    changed |= self.union(ROOT, *(a for a in self.blocks if b.startswith(a + ".")))
        return [*_bottom_up(self._groups()), [ROOT]]

    def _groups(self) -> list[list[str]]:
        groups: dict[str, list[str]] = {}
        for b in self.blocks:
            if self.find(b) != ROOT:
                groups.setdefault(self.find(b), []).append(b)
        # a member inside another member is held by it already (FSDP keeps the outer one)
        return [[b for b in g if not any(b.startswith(a + ".") for a in g)] for g in groups.values()]


def _bottom_up(groups: list[list[str]]) -> list[list[str]]:
    """Units ordered so that one inside another is sharded first (FSDP claims what is left)."""
    def inside(u: list[str], v: list[str]) -> bool:
        return any(b.startswith(a + ".") for a in v for b in u)

    pending, out = list(groups), []
    while pending:
        ready = [u for u in pending if not any(inside(v, u) for v in pending if v is not u)]
        if not ready:  # units inside each other both ways: only one unit can hold them
            ready = [sorted({b for u in pending for b in u})]
            pending = ready[:]
        out += ready
        pending = [u for u in pending if u not in ready]
    return out


def _nodes(body: tuple, loops: dict[int, int]) -> Iterator[tuple[ir.Node, dict[int, int]]]:
    """Every node of a body, with the counts of the non-shared loops around it (by loop id)."""
    for item in body:
        if isinstance(item, ir.Node):
            yield item, loops
        elif isinstance(item, ir.Loop):
            yield from _nodes(item.body, loops if item.shared else {**loops, item.id: item.count})


def _expand(sub: ir.Subgraph, local: str, loops: dict[int, int]) -> list[str]:
    """A local path → the module paths it names: inside a non-shared loop, the name of one of its
    instances means that iteration's copy, so every copy (`h` → `h.0`, `h.1`), as lowering names them."""
    head, _, rest = local.partition(".")
    inst = sub.instance_map.get(head)
    if inst is not None and inst.items and rest.split(".")[0].isdigit():  # a list's child, maybe appended
        inst = ir.list_child(sub.instance_map, inst, int(rest.split(".")[0]))
    ids = [lp for lp in inst.loops if lp in loops] if inst is not None else []
    return [lower._flat(sub, local, dict(zip(ids, idx)), "")
            for idx in itertools.product(*(range(loops[lp]) for lp in ids))]


def _join(path: str, child: str) -> str:
    return f"{path}.{child}" if path else child
