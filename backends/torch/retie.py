"""Share groups that survive PyTorch's own untying: the emitted `retie()` and `materialize`.

PyTorch unties an aliased parameter whenever it replaces a module's tensors instead of writing
into them: `load_state_dict(sd, assign=True)` sets each key's tensor as the attribute, and
`to_empty()` gives each attribute a fresh tensor, so `self.b.weight = self.a.weight` becomes two
tensors (two parameters, half the gradient in each, two optimizer updates of what should be one).

Rule: every emitted model class (and `Program`), and every block class that writes a share or holds
a block that does, has a `retie()` method. It calls `retie()` on its blocks (innermost groups first),
then re-runs exactly the share lines its `__init__` ran (the same text, from
`SubgraphClass.share_lines` and the scheduled-repeat aliases), so each member again *is* its group's
canonical tensor: the canonical member's tensor is kept, the others' are dropped. A member shared
transposed holds no tensor (its `Transposed…` layer reads its owner's), and a scheduled repeat's
copies are one module object, so neither can come untied; their lines are re-run all the same.

`materialize(module, device, seed)` turns a module built on the meta device into one holding
exactly the values `program.torch(seed=seed)` holds, one tensor per share group.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from tiec.compiler import ir
from torch import nn

from .classes import attr, chain

RETIE_DOC = ('"""Alias each share group to its canonical tensor again '
             '(after load_state_dict(assign=True), to_empty())."""')


def retie_method(own: list[str], calls: list[str]) -> list[str]:
    """The `retie` method: the blocks' `retie()` calls, then this class's own share lines."""
    body = [*calls, *(x for x in own if x)]
    return ["def retie(self):", "    " + RETIE_DOC, *("    " + x for x in body), "    return self"]


def block_calls(sub: ir.Subgraph, has_retie: set[str]) -> list[str]:
    """`self.x.retie()` for each block instance of `sub` whose block has a `retie`, looping over the
    `nn.ModuleList`s a non-shared repeat builds (nested once per repeat)."""
    out: list[str] = []
    for inst in sub.instances:
        if inst.block is None or inst.block not in has_retie:
            continue
        head, _, start = inst.name.rpartition(".")
        target = chain("self", inst.name) if not inst.appended else f"{attr('self', head)}[{start}:]"
        if not inst.loops:
            out.append(f"{target}.retie()")
            continue
        names = [f"copy{level}" for level in range(len(inst.loops))]
        for level, name in enumerate(names):
            out.append("    " * level + f"for {name} in {target if level == 0 else names[level - 1]}:")
        out.append("    " * len(names) + f"{names[-1]}.retie()")
    return out


def needs_retie(sub: ir.Subgraph, own: Iterable[str], has_retie: set[str]) -> bool:
    """Whether a block class needs `retie`: it writes a share, or holds a block that has one."""
    return any(x for x in own) or any(i.block in has_retie for i in sub.instances if i.block is not None)


def materialize(module: nn.Module, device: torch.device | str = "cpu", seed: int = 0) -> nn.Module:
    """Give a module built on the meta device (`program.torch(device="meta")`) real tensors, in place.

    Rule: the values are exactly those `program.torch(seed=seed)` gives: the same class is built
    once more on the CPU under the same seeded RNG (so the same initialisation runs, in the same
    order), and each of its tensors is moved to `device` and set as the matching parameter or
    buffer of `module`. A tensor the fresh build shares between slots is set once and aliased, so
    every share group is one tensor, whatever `to_empty()` or `load_state_dict(assign=True)` did
    to `module` before. `requires_grad` and the module's training flags are kept; dtypes are the
    spec's. Peak memory is one CPU copy of the model (none beyond `module` when `device` is the CPU).

    Returns:
        `module` itself.
    """
    from .module import construct

    fresh = construct(type(module), seed)
    ours = dict(module.named_modules(remove_duplicate=False))
    theirs = dict(fresh.named_modules(remove_duplicate=False))
    if ours.keys() != theirs.keys():
        raise ValueError("materialize: the module's submodules differ from a fresh build of its class; "
                         "it was changed after it was built")
    moved: dict[int, torch.Tensor] = {}
    for path, src in theirs.items():
        dst = ours[path]
        for table in ("_parameters", "_buffers"):
            for name, tensor in getattr(src, table).items():
                if tensor is None:
                    continue
                if id(tensor) not in moved:
                    value = tensor.detach().to(device)
                    if isinstance(tensor, nn.Parameter):
                        old = getattr(dst, table).get(name)
                        value = nn.Parameter(value, requires_grad=tensor.requires_grad if old is None
                                             else old.requires_grad)
                    moved[id(tensor)] = value
                getattr(dst, table)[name] = moved[id(tensor)]
    return module

