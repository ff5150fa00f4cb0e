"""Views over the IR, re-exported by `ir`: the flat graphs lowered when first asked for
(`FlatModels`, `FlatTypes`), a model's declared layers and parameters without lowering it, the
nodes of a flat graph with its scans' bodies, module paths through lists of children, and where
each declared parameter's tensor lives (`bindings`) and which ties a model holds."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from .ir import (
    Graph,
    Instance,
    Layer,
    Member,
    Node,
    Param,
    ProgramIR,
    Subgraph,
    TensorType,
    TieGroup,
    frozen,
    qualify,
    split,
)


class FlatModels(Mapping):
    """Model name → its flat `Graph`, lowered when first asked for: compiling and emitting PyTorch
    need only each model's declared layers and parameters (`declared`), so a deep repeat costs
    them nothing per copy; ONNX export and the statistics walk the graph and lower it."""

    def __init__(self, declared: Mapping[str, tuple[tuple[Layer, ...], tuple[Param, ...]]], make):
        self._declared = dict(declared)
        self._make = make
        self._graphs: dict[str, Graph] = {}

    def __getitem__(self, model: str) -> Graph:
        graph = self._graphs.get(model)
        if graph is None:
            if model not in self._declared:
                raise KeyError(model)
            graph = self._graphs[model] = self._make(model)
        return graph

    def __iter__(self):
        return iter(self._declared)

    def __len__(self) -> int:
        return len(self._declared)

    def __contains__(self, model: object) -> bool:  # Mapping's would lower the graph to answer
        return model in self._declared

    def declared(self, model: str) -> tuple[tuple[Layer, ...], tuple[Param, ...]]:
        return self._declared[model]

    def lowered(self, model: str) -> bool:
        return model in self._graphs


class FlatTypes(Mapping):
    """Model name → the types of its flat graph's values, inferred when first asked for."""

    def __init__(self, models: Mapping[str, Graph], infer):
        self._models, self._infer, self._types = models, infer, {}

    def __getitem__(self, model: str) -> Mapping[str, TensorType]:
        if model not in self._types:
            self._types[model] = frozen(self._infer(self._models[model]))
        return self._types[model]

    def __iter__(self):
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, model: object) -> bool:
        return model in self._models


def declared_params(program: ProgramIR, model: str) -> tuple[Param, ...]:
    """A model's parameter slots, without lowering its graph."""
    models = program.models
    return models.declared(model)[1] if isinstance(models, FlatModels) else models[model].params


def declared_layers(program: ProgramIR, model: str) -> tuple[Layer, ...]:
    models = program.models
    return models.declared(model)[0] if isinstance(models, FlatModels) else models[model].layers


def walk_nodes(nodes) -> list[Node]:
    """Every node of a flat graph, each scan's body nodes (recursively) right after the scan."""
    out: list[Node] = []
    for n in nodes:
        out.append(n)
        if n.op == "scan":
            out += walk_nodes(n.attrs["body"])
    return out


def list_child(instances: Mapping[str, Instance], lst: Instance, index: int) -> Instance | None:
    """The child of the list `lst` at `index` (an appended child stands for each of its copies)."""
    for name in lst.items:
        child = instances[name]
        start = int(name.rsplit(".", 1)[1])
        if start == index or child.appended and start <= index < start + child.appended:
            return child
    return None


def step(sub: Subgraph, parts: list[str], i: int) -> tuple[Instance, int]:
    """The instance `parts[i:]` starts with in `sub`, and where the rest begins: a list's child by
    its index; any other instance past the copy indices that follow its name."""
    inst = sub.instance_map[parts[i]]
    i += 1
    if inst.items and i < len(parts) and parts[i].isdigit():
        inst = list_child(sub.instance_map, inst, int(parts[i]))
        return inst, i + 1
    while i < len(parts) and parts[i].isdigit():
        i += 1
    return inst, i


def resolve_path(sub: Subgraph, path: str, blocks: Mapping[str, Subgraph]) -> tuple[Subgraph, Instance, str]:
    """The instance a local module path names (`blk.3.up`, `ds.1`, `layer2.0.downsample.0`), the
    subgraph that declares it, and what follows it (a parameter slot, or "")."""
    parts, i = path.split("."), 0
    while True:
        inst, i = step(sub, parts, i)
        if i >= len(parts) or inst.block is None or parts[i] not in blocks[inst.block].instance_map:
            return sub, inst, ".".join(parts[i:])
        sub = blocks[inst.block]


@dataclass(frozen=True)
class Binding:
    """Where a declared parameter's tensor lives: `canonical` (same naming scope as the key it
    was looked up by), read transposed or not; `group` is None for an unshared parameter."""

    canonical: str
    transposed: bool
    group: int | None


def bindings(ir: ProgramIR, model: str | None = None, grouped: bool = False) -> dict[str, Binding]:
    """Declared parameter → its tensor. With `model`, keys and canonicals are local names and only
    that model's members count (a cross-model group, restricted, re-picks its canonical); without,
    keys are qualified names over the whole program. `grouped`: only the shared parameters (every
    other one is its own tensor)."""
    out: dict[str, Binding] = {}
    for name in ir.models:
        if grouped or model is not None and name != model:
            continue
        for p in declared_params(ir, name):
            key = p.name if model is not None else qualify(name, p.name)
            out[key] = Binding(key, False, None)
    for group in ir.share_groups:
        members = [m for m in group.members if model is None or split(m.param)[0] == model]
        if len(members) < 2:
            continue
        head = members[0]
        for m in members:
            key = split(m.param)[1] if model is not None else m.param
            canon = split(head.param)[1] if model is not None else head.param
            out[key] = Binding(canon, m.transposed != head.transposed, group.id)
    return out


def ties(ir: ProgramIR, model: str | None = None) -> tuple[TieGroup, ...]:
    """Tie groups whose members all lie in `model` (local names), or every tie (qualified)."""
    if model is None:
        return ir.tie_groups
    out = []
    for tie in ir.tie_groups:
        if all(split(m.param)[0] == model for m in tie.members):
            members = tuple(Member(split(m.param)[1], m.transposed, m.span) for m in tie.members)
            out.append(replace(tie, members=members))
    return tuple(out)
