"""One subgraph → the lines of one `nn.Module` class: constructor, forward and, for a model, tie_penalty.

The constructor takes the definition's parameters and builds what they configure: a layer per
instance, an `nn.ModuleList` per non-shared repeat (nested for nested repeats), the block classes
with their arguments; a repeat count becomes an attribute the forward loops over. The forward
keeps the structure: a call per block instance, a `for` loop per repeat (`for blk in self.blk`, or
`for _ in range(self.depth)` over one shared module). Share groups are written once, where the
plan puts them, as one commented line each.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from tiec.compiler import ir
from tiec.compiler.catalog import LAYERS
from tiec.compiler.lower import loop_map
from tiec.dsl.diagnostics import TieError

from .emit_table import TORCH_LAYER
from .forward import ForwardWriter, _Scope
from .lists import list_rows, only_appends
from .naming import Namer, assign, attr, chain, config_expr, literal
from .penalty import init_lines, method_lines, penalty_lines, tie_attrs
from .plan import referenced
from .tree import MODULE_ATTRS, ModuleTree

TORCH_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}
TRANSPOSED_LAYER = {"Linear": "TransposedLinear", "Embedding": "TransposedEmbedding"}


class SubgraphClass(ForwardWriter):
    """The source of one class. `children`: instance copy path → class name of that block copy;
    `transposed(path)`: whether a layer copy's slot is shared transposed (flat-relative path)."""

    def __init__(self, sub: ir.Subgraph, class_name: str, blocks: Mapping[str, ir.Subgraph],
                 children: Mapping[str, str], transposed: Callable[[str], bool],
                 shares: list[tuple[str, str, str]], types: Mapping[str, ir.TensorType], taken: set[str],
                 legacy: ir.Graph | None = None, loop_shares: list | None = None):
        self.sub, self.class_name, self.blocks = sub, class_name, blocks
        self.children, self.is_transposed, self.shares, self.types = children, transposed, shares, types
        self.legacy = legacy
        self.loop_shares = loop_shares or []
        self.tree = ModuleTree(legacy) if legacy is not None else None
        self.loops = loop_map(sub)
        self.kw = Namer({"peers"}).claim(sub.params)
        self.taken = taken
        for inst in sub.instances:
            if legacy is None and inst.name in MODULE_ATTRS:
                raise TieError(f"layer name '{inst.name}' is an nn.Module attribute; PyTorch cannot hold a submodule"
                               " by that name", inst.span, hint=f"rename it, e.g. '{inst.name}_layer'")
        names = {i.name for i in sub.instances}
        self.count_attr: dict[int, str] = {}
        attrs = Namer(names | MODULE_ATTRS)
        for lp in self.loops.values():
            if lp.over is not None:  # steps through a tensor: no count to hold
                continue
            src = lp.count_src.strip()
            self.count_attr[lp.id] = attrs(src if src.isidentifier() else f"repeats_{lp.id}")
        self.used: set[str] = set()
        self.tie_init: list[str] = []  # the tie state's buffers, set by `tie_methods`
        self.schedule_init: list[str] = []  # scheduled repeats' aliases (`backends/torch/schedules.py`)

    # ------------------------------------------------------------------ expressions
    def _cfg(self, src: str | None, value) -> str:
        expr, used = config_expr(src, value, dict(self.sub.params), self.kw.mapping())
        self.used |= used
        return expr

    def _layer(self, path: str) -> ir.Layer:
        """The layer at a local path (`fc`, `fc.2`, `tower.conv1`, `blk.0.up`)."""
        if self.legacy is not None:
            return self.legacy.layer(path)
        return ir.resolve_path(self.sub, path, self.blocks)[1].layer

    def expr(self, path: str, scope: _Scope) -> str:
        """A local module or parameter path as a Python expression inside the forward."""
        if self.legacy is not None:
            for lay in self.legacy.layers:  # a parameter: its layer's module, then the slot
                if path.startswith(lay.path + "."):
                    return f"{self.tree.expr(lay.path)}.{path[len(lay.path) + 1:]}"
            return self.tree.expr(path)
        head, _, rest = path.partition(".")
        inst = self.sub.instance_map[head]
        if inst.items and rest:  # a list's child; inside the repeat that appends it, the loop's copy
            k, _, tail = rest.partition(".")
            child = ir.list_child(self.sub.instance_map, inst, int(k))
            if child.appended and child.loops[-1] in scope.loops:
                base = scope.vars[(child.name, child.loops[-1])]
                return chain(base, tail) if tail else base
        inside = [lp for lp in inst.loops if lp in scope.loops]
        base = scope.vars[(head, inside[-1])] if inside else attr("self", head)
        return chain(base, rest) if rest else base

    # ------------------------------------------------------------------ __init__
    def signature(self) -> tuple[list[str], list[str]]:
        """Constructor parameters, and the lines that fill in defaults computed from other parameters."""
        sig, fill = [], []
        own = dict(self.sub.params)
        for p, src in self.sub.defaults.items():
            name = self.kw(p)
            if src is None:
                sig.append(name)
                continue
            expr, used = config_expr(src, own[p], own, self.kw.mapping())
            if used and self.sub.kind == "block" or used and expr != literal(own[p]):
                sig.append(f"{name}=None")
                fill += [f"if {name} is None:", f"    {name} = {expr}"]
            else:
                sig.append(f"{name}={literal(own[p]) if self.sub.kind == 'model' else expr}")
        return sig, fill

    def _ctor(self, inst: ir.Instance, copy: str) -> str:
        if inst.block is not None:
            child = self.blocks[inst.block]
            names = list(child.defaults)
            args = [(k, self._cfg(src, child.params[k])) for k, src in inst.args.items()]
            positional = [k for k, _ in args] == names[:len(args)]
            rendered = [v if positional else f"{self.kw_of(child, k)}={v}" for k, v in args]
            return f"{self.children[copy]}({', '.join(rendered)})"
        layer = inst.layer
        args = {k: self._cfg(layer.config_src.get(k), v) for k, v in layer.config.items()}
        return self._layer_ctor(layer, args, copy)

    def kw_of(self, child: ir.Subgraph, name: str) -> str:
        return Namer({"peers"}).claim(child.params)(name)

    def _layer_ctor(self, layer: ir.Layer, args: dict[str, str], copy: str) -> str:

        if self.legacy is not None:
            slots = [p.slot for p in self.legacy.params if p.layer == layer.path]
        else:
            slots = [s for s, _ in LAYERS[layer.kind].slots(layer.config)]
        extra = []
        if layer.kind in ("LayerNorm", "RMSNorm") and not slots:
            extra.append("elementwise_affine=False")
        if layer.config.get("dtype", "f32") != "f32":
            extra.append(f"dtype=torch.{TORCH_DTYPE[layer.config['dtype']]}")
        flipped = [s for s in slots if self.is_transposed(f"{copy}.{s}")]
        if flipped:
            if flipped != ["weight"] or layer.kind not in TRANSPOSED_LAYER:
                raise TieError(f"'{copy}.{flipped[0]}' cannot be shared transposed: a {layer.kind} layer reads it "
                               "in its own orientation", layer.span, hint="share it without transposing")
            return TORCH_LAYER[layer.kind](args, tuple(extra)).replace(f"nn.{_torch_class(layer.kind)}(",
                                                                       f"{TRANSPOSED_LAYER[layer.kind]}(", 1)
        return TORCH_LAYER[layer.kind](args, tuple(extra))

    def init_lines(self) -> list[str]:
        sig, fill = self.signature()
        body: list[str] = []
        if self.legacy is not None:
            layers = self.tree.lines(lambda layer: self._layer_ctor(
                layer, {k: self._cfg(layer.config_src.get(k), v) for k, v in layer.config.items()}, layer.path))
            body += aligned([(t, v, "") for t, v in layers])
        else:
            rows = []
            for inst in self.sub.instances:
                if "." in inst.name:  # a list's child: its list builds it
                    continue
                if inst.layer is None and inst.block is None:
                    rows += list_rows(self, inst)
                    continue
                rows.append((*assign("self", inst.name, self._instance(inst)), ""))
            for lp in self.loops.values():
                if only_appends(self.sub, lp):
                    continue
                if lp.over is None and (lp.shared or not self._loop_instances(lp)):
                    rows.append((f"self.{self.count_attr[lp.id]}", self._cfg(lp.count_src, lp.count),
                                 "repeat count"))
            body += aligned(rows)
        body += self.share_lines()
        checks = []
        params = dict(self.sub.params)
        fixed = set(self.sub.structural)
        if self.sub.kind == "model":
            fixed |= {p for p in params if p not in self.used}
        for p, value in params.items():
            if p in fixed:
                msg = f"{self.class_name}: compiled with {p}={value!r}; recompile with --set {p}=N"
                checks += [f"if {self.kw(p)} != {literal(value)}:", f"    raise ValueError({literal(msg)})"]
        for name, index, src in dict.fromkeys(self.sub.counts):
            count, reads = config_expr(src, self._count_of(name), params, self.kw.mapping())
            if not reads:  # a literal count: the compiler has checked the index already
                continue
            self.used |= reads
            shown = f"{name}[{index}]"
            if self.sub.instance_map[name].appended:  # an appended child's copy: its index in the list
                head, _, start = name.rpartition(".")
                shown = f"{head}[{int(start) + index}]"
            msg = f"{self.class_name}: the spec refers to {shown}, so {count} must be at least {index + 1}"
            checks += [f"if {count} <= {index}:", f"    raise ValueError({literal(msg)})"]
        for extra in (self.schedule_init, self.tie_init):
            if extra:
                body += ["", *extra]
        head = [f"def __init__({', '.join(['self', *sig])}):", "    super().__init__()"]
        return head + ["    " + x if x else "" for x in fill + checks + body]

    def share_lines(self) -> list[str]:
        """The lines aliasing this class's own share groups (`__init__` runs them, and so does `retie`)."""
        out: list[str] = ["", *aligned(self.shares)] if self.shares else []
        for loop_id, groups in self.loop_shares:
            out += ["", *self._loop_share_lines(self.loops[loop_id], groups)]
        return out

    def _loop_share_lines(self, lp: ir.Loop, groups) -> list[str]:
        """Groups one iteration of `lp` forms, aliased copy by copy: `for a, b in zip(self.a, self.b): …`."""
        heads = list(dict.fromkeys(m.split(".")[0] for g in groups for m, _ in g))
        looped = [h for h in (i.name for i in self.sub.instances) if h in heads and self.sub.instance_map[h].loops
                  and self.sub.instance_map[h].loops[0] == lp.id]
        runs = {i.name.rpartition(".")[0]: i.name.rpartition(".")[2] for i in self.sub.instances
                if i.appended and i.loops[-1] == lp.id and i.name.rpartition(".")[0] in heads}  # list → first index
        looped += list(runs)
        names = Namer({"self", *self.kw.mapping().values()})
        var = {h: names.fresh(h) for h in looped}

        def expr(path: str) -> str:
            head, _, rest = path.partition(".")
            if head in runs:  # `block.1.fc.weight`: the appended copy this iteration adds
                rest = rest.partition(".")[2]
            if head in var:  # the loop variable itself when the path is the copy (a transposed owner)
                return chain(var[head], rest) if rest else var[head]
            return chain("self", path)

        rows = []
        for group in groups:
            canon = group[0][0]
            for name, flipped in group[1:]:
                if flipped:
                    owner, _, slot = canon.rpartition(".")
                    rows.append((f"{expr(name.rpartition('.')[0])}.owner", f'({expr(owner)}, "{slot}")',
                                 "shared, read transposed: one tensor per copy"))
                else:
                    rows.append((expr(name), expr(canon), "shared: one tensor per copy"))
        if not looped:
            return aligned(rows)
        its = [f"{attr('self', h)}[{runs[h]}:]" if h in runs else attr("self", h) for h in looped]
        head = f"for {var[looped[0]]} in {its[0]}:" if len(looped) == 1 else \
            f"for {', '.join(var[h] for h in looped)} in zip({', '.join(its)}):"
        return [head, *("    " + x for x in aligned(rows))]

    def _count_of(self, name: str) -> int:
        return self.loops[self.sub.instance_map[name].loops[0]].count

    def _instance(self, inst: ir.Instance) -> str:
        from .plan import copies

        if not inst.loops:
            return self._ctor(inst, inst.name)
        paths = copies(self.sub, inst)
        same = inst.block is not None and len({self.children[p] for p in paths}) == 1 or \
            inst.layer is not None and not any(self.is_transposed(f"{p}.weight") for p in paths)
        ctors = [self._ctor(inst, paths[0])] * len(paths) if same else [self._ctor(inst, p) for p in paths]
        counts = [self.loops[lp] for lp in inst.loops]
        if len(set(ctors)) == 1:
            out = ctors[0]
            for lp in reversed(counts):
                out = f"nn.ModuleList([{out} for _ in range({self._cfg(lp.count_src, lp.count)})])"
            return out

        def nested(level: int, items: list[str]) -> str:
            if level == len(counts):
                return items[0]
            step = len(items) // counts[level].count
            parts = [nested(level + 1, items[i * step:(i + 1) * step]) for i in range(counts[level].count)]
            return f"nn.ModuleList([{', '.join(parts)}])"

        return nested(0, ctors)

    def _loop_instances(self, lp: ir.Loop) -> list[ir.Instance]:
        used = referenced(lp.body)
        return [i for i in self.sub.instances if lp.id in i.loops and i.name.split(".")[0] in used]

    # ------------------------------------------------------------------ forward
    # ------------------------------------------------------------------ tie_penalty
    def tie_methods(self, groups: tuple[ir.TieGroup, ...], member: Callable[[str, bool], str],
                    zero: str) -> list[list[str]]:
        """`tie_penalty` and, with ties, the methods that read and set λ and load anchors (their buffers
        go to `tie_init`, the end of `__init__`)."""
        copies = {}  # an instance repeated by one top-level loop → its count, for ties written copy by copy
        if self.legacy is None:
            for inst in self.sub.instances:
                if len(inst.loops) == 1 and not inst.appended and \
                        any(lp.id == inst.loops[0] for lp in self.sub.body if isinstance(lp, ir.Loop)):
                    copies[inst.name] = (inst.loops[0], self.loops[inst.loops[0]].count)
        attrs = tie_attrs(groups, [i.name for i in self.sub.instances] +
                          ([lay.path.split(".")[0] for lay in self.legacy.layers] if self.legacy is not None else []),
                          copies)
        self.tie_init = init_lines(groups, attrs, member, copies)
        body = penalty_lines(groups, member, zero, copies, attrs)
        doc = '"""Σ over tie groups of λ · Σ_{i<j} ‖w_i − w_j‖² (l2) or λ · Σ_{i<j} Σ|w_i − w_j| (l1)."""'
        if any(t.kind == "centroid" for t in groups):
            doc = '"""Σ over tie groups of λ · Σ_{i<j} ‖w_i − w_j‖² (pairwise) or λ · Σ_i ‖w_i − w̄‖² (centroid), l2 or l1."""'
        return [["def tie_penalty(self):", "    " + doc, *("    " + x for x in body)],
                *method_lines(groups, attrs, copies)]


def _torch_class(kind: str) -> str:
    return {"SelfAttention": "MultiheadAttention"}.get(kind, kind)


def aligned(rows: list[tuple[str, str, str]], width_cap: int = 48) -> list[str]:
    """`target = value  # comment` rows with their `=` in one column, as nanoGPT lines its layers up."""
    width = max((len(t) for t, v, _ in rows if v and len(t) <= width_cap), default=0)
    out = []
    for target, value, comment in rows:
        line = f"{target.ljust(width)} = {value}" if value else target
        out.append(f"{line}  # {comment}" if comment else line)
    return out


def summary(params: list[ir.Param], binds: Mapping[str, ir.Binding]) -> str:
    """`binds` may hold only the shared slots: any other is its own tensor."""
    own = [p for p in params if p.name not in binds or binds[p.name].canonical == p.name]
    count = sum(math.prod(p.shape) for p in own)
    return f"{len(params)} parameter slots using {len(own)} tensors ({count:,} weights)"
