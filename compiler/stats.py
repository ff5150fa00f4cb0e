"""Parameter statistics: what the program stores versus what it uses.

Rule: `logical_params` counts every use (each call of a layer counts all its parameters, each
repeat iteration is a call, each parameter reference in an expression counts); `unique_params`
counts distinct tensors after sharing; bytes follow each parameter's dtype. For each convolution
call, the parameters an unshared (locally connected) layer over the same inferred input would
need show the saving from sharing weights across positions. Buffers (BatchNorm's running
statistics) are no parameters: `buffer_values` and `buffer_bytes` count the state dict's ones apart.
"""
from __future__ import annotations

from math import prod

from . import ir
from .buffers import buffers_of


def _numel(p: ir.Param) -> int:
    return prod(p.shape)


def _bytes(p: ir.Param) -> int:
    return _numel(p) * ir.DTYPE_BYTES[p.dtype]


def _uses(graph: ir.Graph) -> list[ir.Param]:
    """Every parameter use, in order (a layer call uses all its slots)."""
    by_layer: dict[str, list[ir.Param]] = {}
    for p in graph.params:
        by_layer.setdefault(p.layer, []).append(p)
    params = graph.param_map()
    out: list[ir.Param] = []
    for n in ir.walk_nodes(graph.nodes):
        if n.op == "param":
            out.append(params[n.attrs["param"]])
        elif n.op in ir.LAYER_KINDS:
            out.extend(by_layer.get(n.attrs["layer"], ()))
    return out


def _convolutions(graph: ir.Graph, types) -> list[dict]:
    out, seen = [], set()
    for n in ir.walk_nodes(graph.nodes):
        if n.op != "Conv2d" or n.attrs["layer"] in seen or types is None:
            continue
        seen.add(n.attrs["layer"])
        layer = graph.layer(n.attrs["layer"])
        c = layer.config
        x, y = types[n.inputs[0]], types[n.name]
        kh, kw = c["kernel_size"]
        per_position = c["out_channels"] * c["in_channels"] * kh * kw + (c["out_channels"] if c["bias"] else 0)
        shared = per_position
        hw = y.shape[2:]
        local = per_position * prod(hw) if all(isinstance(d, int) for d in hw) else None
        out.append({
            "layer": layer.path, "input": list(x.shape), "output": list(y.shape), "params": shared,
            "positions": prod(hw) if local is not None else None, "locally_connected_params": local,
            "saving": round(local / shared, 2) if local else None,
        })
    return out


def model_stats(program: ir.ProgramIR, name: str) -> dict:
    graph = program.models[name]
    binds = ir.bindings(program, name)
    params = graph.param_map()
    canon = {b.canonical for b in binds.values()}
    uses = _uses(graph)
    groups = {}
    for key, b in binds.items():
        if b.group is not None:
            groups.setdefault(b.group, []).append((key, b.transposed))
    return {
        "logical_params": sum(_numel(p) for p in uses),
        "unique_params": sum(_numel(params[c]) for c in canon),
        "declared_params": sum(_numel(p) for p in graph.params),
        "logical_bytes": sum(_bytes(p) for p in uses),
        "unique_bytes": sum(_bytes(params[c]) for c in canon),
        "tensors": len(canon),
        "buffer_values": sum(prod(b.shape) for b in buffers_of(graph.layers) if b.persistent),
        "buffer_bytes": sum(prod(b.shape) * ir.DTYPE_BYTES[b.dtype] for b in buffers_of(graph.layers) if b.persistent),
        "layers": len(graph.layers),
        "nodes": len(graph.nodes),
        "inputs": {i.name: str(i.type) for i in graph.inputs},
        "outputs": {o.name: str(program.types[name][o.value]) if program.types else None for o in graph.outputs},
        "share_groups": [_group_json(members, params) for _, members in sorted(groups.items())],
        "tie_groups": [_tie_json(t) for t in ir.ties(program, name)],
        "convolutions": _convolutions(graph, program.types.get(name) if program.types else None),
        "modules": _by_module(uses, [params[c] for c in canon], params, binds),
    }


def _by_module(uses: list[ir.Param], tensors: list[ir.Param], params, binds) -> dict[str, dict[str, int]]:
    """Logical and unique parameters per top-level module (`layer`, `blk`, `embed`, …): where the
    sharing happens. A tensor counts under the module of its canonical slot (`unique_params`);
    `read_params` counts the distinct tensors the module's uses read, wherever they are stored, so
    a module is used more than its tensors exactly when `logical_params > read_params` (a head
    reading the embedding's matrix once is not)."""
    out: dict[str, dict[str, int]] = {}
    read: dict[str, set[str]] = {}

    def row(p: ir.Param) -> dict[str, int]:
        return out.setdefault(p.name.split(".", 1)[0], {"logical_params": 0, "unique_params": 0, "read_params": 0})

    for p in uses:
        row(p)["logical_params"] += _numel(p)
        read.setdefault(p.name.split(".", 1)[0], set()).add(binds[p.name].canonical)
    for p in tensors:
        row(p)["unique_params"] += _numel(p)
    for top, names in read.items():
        out[top]["read_params"] = sum(_numel(params[c]) for c in names)
    return out


def _group_json(members: list[tuple[str, bool]], params) -> dict:
    head = members[0][0]
    return {"canonical": head, "members": [m for m, _ in members], "transposed": [m for m, t in members if t],
            "shape": list(params[head].shape) if head in params else None,
            "numel": prod(params[head].shape) if head in params else None}


def _tie_json(t: ir.TieGroup) -> dict:
    return {"members": [m.param for m in t.members], "transposed": [m.param for m in t.members if m.transposed],
            "lambda": t.strength, "norm": t.norm, "kind": t.kind, "anchors": [a.key for a in t.anchors]}


def program_stats(program: ir.ProgramIR) -> dict:
    """Statistics for every model and for the program as a whole (cross-model shares counted once)."""
    models = {name: model_stats(program, name) for name in program.models}
    params = {ir.qualify(m, p.name): p for m, g in program.models.items() for p in g.params}
    canon = {b.canonical for b in ir.bindings(program).values()}
    groups = [{"id": g.id, "canonical": g.members[0].param, "members": [m.param for m in g.members],
               "transposed": [m.param for m in g.members if m.transposed],
               "shape": list(params[g.members[0].param].shape), "numel": _numel(params[g.members[0].param])}
              for g in program.share_groups]
    return {
        "models": models,
        "program": {
            "logical_params": sum(m["logical_params"] for m in models.values()),
            "unique_params": sum(_numel(params[c]) for c in canon),
            "logical_bytes": sum(m["logical_bytes"] for m in models.values()),
            "unique_bytes": sum(_bytes(params[c]) for c in canon),
            "tensors": len(canon),
        },
        "share_groups": groups,
        "tie_groups": [{"id": t.id, **_tie_json(t)} for t in program.tie_groups],
    }
