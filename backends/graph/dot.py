"""A spec as a Graphviz DOT digraph: its dataflow, blocks as clusters, share and tie groups.

Rule: each model's structured body is walked in execution order, as lowering walks it (a block
call inlines the block's body, a repeat runs its body once per iteration), and every op it runs
is one node: an input, a layer call, a function op, a parameter read, a literal, an output; a
layer with parameters that nothing calls or reads is one node too, marked "not called". An
edge joins the node that makes a value to each node that reads it. A model, each block call and
each repeat is a cluster around its nodes.

Colour is tensor identity: every layer slot or parameter read that is a member of a share group,
or whose tensor more than one node uses (one tower called twice, a `repeat … share` body), is
filled with its tensor's colour; a layer whose slots hold several such tensors is striped with
each. A member read transposed against its group's canonical tensor has a double border and
`.T` after the slot in its label. Each tie group is a dashed, undirected edge from its first
member's node to each other member's, labelled with λ (slots of the same two nodes with the same
λ and norm share one edge). A legend cluster names every share group (its colour, shape and
members) and every tie group.

Every node and cluster identifier is generated (`n12`, `cluster_3`); every label is a quoted
string escaped by `quote`, so no name, path or number from the spec can end a string or start a
statement.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tiec.compiler import ir, lower
from tiec.compiler.catalog import LAYERS, REQUIRED
from tiec.compiler.lower import instance_block
from tiec.dsl.diagnostics import Span, TieError

MAX_GRAPH_NODES = 5_000  # drawn nodes (every repeat unrolled); Graphviz's layout grows faster than linearly

# Fill colours, light enough for black text; a program with more groups reuses them in order.
PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
           "#bc80bd", "#ccebc5", "#ffed6f", "#d9d9d9")


def _escape(text: object) -> str:
    s = str(text).encode("utf-8", "replace").decode("utf-8")
    s = "".join(c if c.isprintable() else "\ufffd" for c in s)
    return s.replace("\\", "\\\\").replace('"', '\\"')


def quote(text: object) -> str:
    """`text` as a DOT quoted string that Graphviz shows literally: backslashes are doubled (a label
    would otherwise read `\\N`, `\\l` or a line continuation in them), quotes escaped, control
    characters (newlines too) and unencodable code points replaced by U+FFFD."""
    return '"' + _escape(text) + '"'


def _label(*lines: object) -> str:
    """A quoted label of several lines, each escaped as by `quote`, joined by DOT's `\\n`."""
    return '"' + "\\n".join(_escape(line) for line in lines) + '"'


def _call_text(layer: ir.Layer) -> str:
    """`Linear(784, 256)`, `Conv2d(1, 16, kernel=(3, 3), padding=(1, 1))`: required arguments by
    position, options only where they differ from their default."""
    parts = []
    for arg in LAYERS[layer.kind].args:
        value = layer.config.get(arg.target)
        if arg.default is REQUIRED:
            parts.append(str(value))
        elif arg.name == "dtype" and value in ("", "f32"):
            continue  # the default parameter dtype, however the config spells it
        elif value != arg.default and value is not None:
            parts.append(f"{arg.name}={value}")
    return f"{layer.kind}({', '.join(parts)})"


def _flat(sub: ir.Subgraph, local: str, indices: dict[int, int], prefix: str) -> str:
    """A local module path → the model's module path, as lowering names it: a copy made by a
    non-shared repeat takes the iteration's index after the instance's name (`blk.3.up`)."""
    return lower._flat(sub, local, indices, prefix)


@dataclass
class _Drawn:
    """One drawn node: its label lines and the tensors it uses (slot → qualified canonical, transposed)."""

    id: str
    shape: str
    lines: list[str]
    slots: list[tuple[str, str, bool, int | None]] = field(default_factory=list)


class _Drawing:
    """The walk: nodes, clusters (as nested statement lists) and edges, in order."""

    def __init__(self, program: ir.ProgramIR):
        self.program = program
        self.binds = ir.bindings(program)
        self.nodes: dict[str, _Drawn] = {}
        self.edges: list[tuple[str, str]] = []
        self.root: list = []  # statements: a node id, or ("cluster", label, [statements])
        self.uses: dict[str, list[str]] = {}  # qualified canonical tensor → drawn node ids, in order
        self.first_use: dict[str, str] = {}  # qualified declared parameter → the first node that uses it
        self.clusters = 0
        self.calls: dict[str, int] = {}  # qualified block-instance path → calls drawn so far
        self.span = next(iter(program.structure.values())).span if program.structure else Span(program.source, 0, 0, 0, 0)

    def node(self, into: list, shape: str, lines: list[str], params: list[tuple[str, str, bool]] = ()) -> str:
        """Add a node; `params`: (slot label, qualified declared parameter, read transposed)."""
        if len(self.nodes) >= MAX_GRAPH_NODES:
            raise TieError(f"the drawing would have over {MAX_GRAPH_NODES:,} nodes, the limit of `tiec graph`",
                           self.span, hint="draw one model (--model), or fewer repeats (--set)")
        drawn = _Drawn(f"n{len(self.nodes)}", shape, lines)
        for slot, param, transposed in params:
            b = self.binds[param]
            drawn.slots.append((slot, b.canonical, b.transposed != transposed, b.group))
            self.uses.setdefault(b.canonical, []).append(drawn.id)
            self.first_use.setdefault(param, drawn.id)
        self.nodes[drawn.id] = drawn
        into.append(drawn.id)
        return drawn.id

    def cluster(self, into: list, label: str) -> list:
        body: list = []
        self.clusters += 1
        into.append(("cluster", f"cluster_{self.clusters}", label, body))
        return body

    def model(self, name: str) -> None:
        sub = self.program.structure[name]
        into = self.cluster(self.root, f"model {name}")
        env = {}
        for i in sub.inputs:
            env[i.name] = self.node(into, "invhouse", [i.name, str(i.type)])
        self.walk(sub.body, sub, env, {}, "", into, name)
        for out in sub.outputs:
            self.edges.append((env[out.value], self.node(into, "house", [out.name])))
        self.uncalled(name, into)

    def uncalled(self, name: str, into: list) -> None:
        """A layer no op runs nor reads, such as T5's `shared`, whose one tensor the embeddings and
        the head use under their own keys: a box of its own, marked so, coloured by its groups."""
        for layer in self.program.models[name].layers:
            slots = [(slot, ir.qualify(name, f"{layer.path}.{slot}" if slot else layer.path), False)
                     for slot, _ in LAYERS[layer.kind].slots(layer.config)]
            if slots and not any(param in self.first_use for _, param, _ in slots):
                self.node(into, "box", [layer.path, _call_text(layer), "not called"], slots)

    def walk(self, body, sub: ir.Subgraph, env: dict, indices: dict, prefix: str, into: list, model: str) -> None:
        for item in body:
            if isinstance(item, ir.Loop):
                over = item.over
                label = f"repeat {item.count}{' share' if item.shared else ''}" if over is None else \
                    f"repeat over dim {over.dim} (each step)"
                inner = self.cluster(into, label)
                for outer, name, _ in item.carried:
                    env[name] = env[outer]
                if over is not None:
                    env[over.slice] = env[over.source]
                for i in range(item.count if over is None else 1):
                    self.walk(item.body, sub, env, indices if item.shared else {**indices, item.id: i}, prefix,
                              inner, model)
                    env.update({name: env[result] for _, name, result in item.carried})
                if over is not None:
                    env.update({after: env[value] for after, value in over.stacked})
            elif isinstance(item, ir.Node) and item.op == "call":
                self.call(item, sub, env, indices, prefix, into, model)
            elif isinstance(item, ir.Node):
                self.op(item, sub, env, indices, prefix, into, model)

    def call(self, n: ir.Node, sub, env, indices, prefix, into, model) -> None:
        path = _flat(sub, n.attrs["instance"], indices, prefix)
        owner, inst, _ = ir.resolve_path(sub, n.attrs["instance"], self.program.blocks)
        if inst.block is None:  # a list run as a chain: each child on the one before's output
            body = self.cluster(into, f"{path}: {len(lower.children(owner, inst, n.attrs['children']))} children")
            value = n.inputs[0]
            for child_path, child in lower.children(owner, inst, n.attrs["children"]):
                local = n.attrs["instance"][:-len(inst.name)] + child_path
                step = ir.Node(child.layer.kind if child.layer else "call", f"{n.name}~{child_path}", (value,),
                               ir.frozen({"layer": local} if child.layer else {
                                   "instance": local, "outputs": (f"{n.name}~{child_path}",)}), n.span)
                (self.op if child.layer else self.call)(step, sub, env, indices, prefix, body, model)
                value = step.name
            env[n.attrs["outputs"][0]] = env[value]
            return
        child = self.program.blocks[instance_block(sub, n.attrs["instance"], self.program.blocks)]
        inner = {i.name: env[v] for i, v in zip(child.inputs, n.inputs)}
        key = ir.qualify(model, path)
        self.calls[key] = self.calls.get(key, 0) + 1
        again = f" (call {self.calls[key]})" if self.calls[key] > 1 else ""
        body = self.cluster(into, f"{path}: {child.definition}{again}")
        self.walk(child.body, child, inner, {}, path + ".", body, model)
        for name, out in zip(n.attrs["outputs"], child.outputs):
            env[name] = inner[out.value]

    def op(self, n: ir.Node, sub, env, indices, prefix, into, model) -> None:
        if "layer" in n.attrs:
            path = _flat(sub, n.attrs["layer"], indices, prefix)
            layer = _layer(self.program, sub, n.attrs["layer"])
            slots = [(slot, ir.qualify(model, f"{path}.{slot}"), False) for slot, _ in LAYERS[layer.kind].slots(layer.config)]
            nid = self.node(into, "box", [path, _call_text(layer)], slots)
        elif n.op == "param":
            param = _flat(sub, n.attrs["param"], indices, prefix)
            transposed = n.attrs["transposed"]
            name = param + (".T" if transposed else "")
            nid = self.node(into, "note", [name], [("", ir.qualify(model, param), transposed)])
        elif n.op == "const":
            nid = self.node(into, "plaintext", [repr(n.attrs["value"])])
        else:
            nid = self.node(into, "ellipse", [n.op])
        for v in n.inputs:
            self.edges.append((env[v], nid))
        env[n.name] = nid


def _layer(program: ir.ProgramIR, sub: ir.Subgraph, local: str) -> ir.Layer:
    """The layer a local path calls: `fc`, `blk.3` (an indexed copy is the instance's layer), or
    one inside a block instance, `tower.fc`."""
    return ir.resolve_path(sub, local, program.blocks)[1].layer


def dot_source(program: ir.ProgramIR, model: str | None = None, title: str = "") -> str:
    """The DOT text of `model`, or of every model (each its own cluster), by the module's rule.

    Args:
        program: a compiled program.
        model: one model's name, or None for all.
        title: the graph's caption (the spec's path); escaped like every label.
    """
    d = _Drawing(program)
    names = [model] if model is not None else list(program.structure)
    for name in names:
        d.model(name)
    colours, legend = _colours(program, d, names)
    out = ["digraph tiec {", "  graph [rankdir=TB, fontname=Helvetica, labelloc=t, label=" + quote(title) + "];",
           "  node [fontname=Helvetica, fontsize=10];", "  edge [fontname=Helvetica, fontsize=9];"]
    _statements(d, d.root, colours, out, "  ")
    out += _ties(program, d, names)
    out += legend
    out.append("}")
    return "\n".join(out) + "\n"


def _colours(program: ir.ProgramIR, d: _Drawing, names: list[str]) -> tuple[dict[str, str], list[str]]:
    """Canonical tensor → colour (share groups first, by id; then tensors used by several nodes),
    and the legend's statements."""
    colours: dict[str, str] = {}
    lines = ["  subgraph cluster_legend {", '    label="share and tie groups"; style=rounded; color=gray60;']
    params = {ir.qualify(m, p.name): p for m in names for p in ir.declared_params(program, m)}
    k = 0
    for g in program.share_groups:
        if not any(ir.split(m.param)[0] in names for m in g.members):
            continue
        canon = d.binds[g.members[0].param].canonical
        colours[canon] = PALETTE[k % len(PALETTE)]
        k += 1
        head = params.get(g.members[0].param)
        shape = f" {list(head.shape)}" if head is not None else ""
        members = ", ".join(m.param + (".T" if m.transposed else "") for m in g.members)
        lines.append(f"    g{g.id} [shape=box, style=filled, fillcolor={quote(colours[canon])}, "
                     f"label={_label(f'share #{g.id}{shape}', members)}];")
    by_layer: dict[str, str] = {}  # a reused layer's tensors take one colour: the layer's
    for canon, users in d.uses.items():
        if canon in colours or len(users) < 2:
            continue
        p = params.get(canon)
        owner = ir.qualify(ir.split(canon)[0], p.layer) if p is not None else canon
        if owner not in by_layer:
            by_layer[owner] = PALETTE[k % len(PALETTE)]
            k += 1
            lines.append(f"    r{len(by_layer)} [shape=box, style=filled, fillcolor={quote(by_layer[owner])}, "
                         f"label={_label(f'one set of tensors, {len(set(users))} uses', owner)}];")
        colours[canon] = by_layer[owner]
    for t in program.tie_groups:
        if all(ir.split(m.param)[0] in names for m in t.members):
            members = ", ".join(m.param + (".T" if m.transposed else "") for m in t.members)
            members += "".join(f", anchor(\"{a.key}\")" for a in getattr(t, "anchors", ()))
            head = f"tie #{t.id} λ={t.strength:g} ({t.norm}{', centroid' if getattr(t, 'kind', '') == 'centroid' else ''})"
            lines.append(f"    t{t.id} [shape=box, style=dashed, label={_label(head, members)}];")
    lines.append("  }")
    return colours, (lines if len(lines) > 3 else [])


def _statements(d: _Drawing, items: list, colours: dict[str, str], out: list[str], pad: str) -> None:
    for item in items:
        if isinstance(item, tuple):
            _, cid, label, body = item
            out.append(f"{pad}subgraph {cid} {{")
            out.append(f"{pad}  label={quote(label)}; style=rounded; color=gray40;")
            _statements(d, body, colours, out, pad + "  ")
            out.append(f"{pad}}}")
        else:
            out.append(pad + _node(d.nodes[item], colours))
    if pad == "  ":
        out += [f"  {a} -> {b};" for a, b in d.edges]


def _node(n: _Drawn, colours: dict[str, str]) -> str:
    lines, fills, transposed, reused = list(n.lines), [], False, False
    for slot, canon, flipped, group in n.slots:
        colour = colours.get(canon)
        if colour is None:
            continue
        if colour not in fills:
            fills.append(colour)
        transposed |= flipped
        if slot and group is not None:
            lines.append(f"{slot}{'.T' if flipped else ''}: share #{group}")
        elif group is None:
            reused = True
    if reused:
        lines.append("reused")
    attrs = [f"shape={n.shape}", f"label={_label(*lines)}"]
    if fills:
        striped = len(fills) > 1 and n.shape == "box"
        attrs += [f"style={'striped' if striped else 'filled'}", f"fillcolor={quote(':'.join(fills) if striped else fills[0])}"]
    if transposed:
        attrs.append("peripheries=2")
    return f"{n.id} [{', '.join(attrs)}];"


def _kind(t: ir.TieGroup) -> str:
    """`l1`, `centroid`, `l1, centroid`: what differs from the default l2 pairwise tie."""
    return ", ".join(x for x in (t.norm if t.norm != "l2" else "", getattr(t, "kind", "pairwise")) if x != "pairwise" and x)


def _ties(program: ir.ProgramIR, d: _Drawing, names: list[str]) -> list[str]:
    """One dashed edge per (pair of drawn nodes, λ, norm, kind), naming the slots it covers; a
    member's anchors (fixed tensors from a checkpoint) are one cylinder per member node and kind
    of tie, naming their keys."""
    edges: dict[tuple, list[str]] = {}
    anchored: dict[tuple, tuple[list[str], list[str]]] = {}
    params = {ir.qualify(m, p.name): p for m in names for p in ir.declared_params(program, m)}
    for t in program.tie_groups:
        if not all(ir.split(m.param)[0] in names for m in t.members):
            continue
        ends = [d.first_use.get(m.param) for m in t.members]
        if ends[0] is None:
            continue
        head = params.get(t.members[0].param)
        slot = head.slot if head is not None else t.members[0].param
        for m, end in zip(t.members[1:], ends[1:]):
            if end is not None:
                edges.setdefault((ends[0], end, t.strength, _kind(t)), []).append(slot + (".T" if m.transposed else ""))
        for anchor in getattr(t, "anchors", ()):
            slots, keys = anchored.setdefault((ends[0], t.strength, _kind(t)), ([], []))
            slots.append(slot)
            keys.append(str(anchor.key))
    out = []
    for (a, b, strength, kind), slots in edges.items():
        label = _label(f"tie λ={strength:g}" + (f" {kind}" if kind else ""), ", ".join(slots))
        out.append(f"  {a} -> {b} [style=dashed, dir=none, constraint=false, color=gray30, label={label}];")
    for i, ((a, strength, kind), (slots, keys)) in enumerate(anchored.items()):
        out.append(f"  a{i} [shape=cylinder, style=dashed, label={_label('anchor (fixed)', ', '.join(keys))}];")
        label = _label(f"tie λ={strength:g}" + (f" {kind}" if kind else ""), ", ".join(slots))
        out.append(f"  {a} -> a{i} [style=dashed, dir=none, color=gray30, label={label}];")
    return out
