"""One model → the lines of one `nn.Module` class: constructor, forward, tie_penalty.

Every tensor reference goes through `tensor()`, which reads the model's share bindings:
an unshared or plainly shared slot is read through the canonical slot (aliased in the
constructor, so `self.lm_head.weight is self.embed.weight`); a slot shared transposed is
`None` in the module and is read as the canonical tensor's `.T`, so its layer is called in
functional form. Inside the all-models `Program`, a canonical tensor of another model is read
through `self._peers[model]`, a plain dict the Program fills: no second state-dict key.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tiec.compiler.ir import Graph, Layer, Param, ProgramIR, TieGroup, bindings, split, ties
from tiec.dsl.diagnostics import TieError

from .emit_table import TORCH_EMIT, TORCH_LAYER, Call
from .liveness import inlined_literals, local_names
from .naming import Namer, config_expr, literal
from .tree import ModuleTree

TORCH_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}


@dataclass(frozen=True)
class Bound:
    """A slot's tensor: the canonical slot `canonical` of model `model`, read transposed or not."""

    model: str
    canonical: str
    transposed: bool
    group: int | None


def resolve(ir: ProgramIR, model: str | None = None) -> dict[str, dict[str, Bound]]:
    """Model → its local slots → Bound: one model alone (`model` given), or every model as a member
    of the whole program (None), computed in one pass over the program's bindings."""
    if model is not None:
        return {model: {k: Bound(model, b.canonical, b.transposed, b.group) for k, b in bindings(ir, model).items()}}
    out: dict[str, dict[str, Bound]] = {name: {} for name in ir.models}
    for key, b in bindings(ir, None).items():
        owner, local = split(key)
        out[owner][local] = Bound(*split(b.canonical), b.transposed, b.group)
    return out


def penalty_lines(groups: tuple[TieGroup, ...], member: Callable[[str, bool], str], zero: str) -> list[str]:
    """`tie_penalty`'s body: λ · Σ_{i<j} ‖w_i − w_j‖² (l2) or λ · Σ_{i<j} Σ|w_i − w_j| (l1) per group."""
    if not groups:
        return [f"return {zero}"]
    out = []
    for n, tie in enumerate(groups):
        if tie.norm not in ("l2", "l1"):
            raise TieError(f"tie group {tie.id}: unknown norm {tie.norm!r} (expected 'l2' or 'l1')", tie.span)
        ws = [member(m.param, m.transposed) for m in tie.members]
        lam, k = literal(float(tie.strength)), len(ws)
        names = " ~ ".join(m.param + (".T" if m.transposed else "") for m in tie.members)
        out.append(f"# tie group {tie.id} ({tie.norm}): {names}")
        if k == 2 and tie.norm == "l2":
            term = f"{lam} * (({ws[0]} - {ws[1]}) ** 2).sum()"
        elif k == 2:
            term = f"{lam} * ({ws[0]} - {ws[1]}).abs().sum()"
        else:
            out.append(f"w = torch.stack([{', '.join(ws)}])")
            if tie.norm == "l2":  # Σ_{i<j} ‖w_i − w_j‖² = k · Σ_i ‖w_i − w̄‖²: linear in k, not quadratic
                term = f"{lam} * {k} * ((w - w.mean(0)) ** 2).sum()"
            else:
                term = f"{lam} * torch.pdist(w.flatten(1), p=1).sum()"
        out.append(f"penalty = {term}" if n == 0 else f"penalty = penalty + {term}")
    return [*out, "return penalty"]


def aligned(rows: list[tuple[str, str, str]], width_cap: int = 48) -> list[str]:
    """`target = value  # comment` rows with their `=` in one column, as nanoGPT lines its layers up."""
    width = max((len(t) for t, v, _ in rows if v and len(t) <= width_cap), default=0)
    out = []
    for target, value, comment in rows:
        line = f"{target.ljust(width)} = {value}" if value else target
        out.append(f"{line}  # {comment}" if comment else line)
    return out


class ModelClass:
    """The source lines of one model's class (`program`: as a member of the all-models Program)."""

    def __init__(self, ir: ProgramIR, model: str, class_name: str, trees: Mapping[str, ModuleTree],
                 binds: Mapping[str, dict[str, Bound]], program: bool):
        self.ir, self.name, self.class_name, self.program = ir, model, class_name, program
        self.graph: Graph = ir.models[model]
        self.trees = trees
        self.tree = trees[model]
        self.binds = binds[model]
        self.params = self.graph.param_map()
        self.slots: dict[str, list] = {}  # layer path → its parameters, in slot order
        for p in self.graph.params:
            self.slots.setdefault(p.layer, []).append(p)
        self.peers = sorted({b.model for b in self.binds.values() if b.model != model and b.transposed})
        self.compiled = {k: self.graph.config.get(k, v) for k, v in self.graph.defaults.items()}
        self.compiled.update({k: v for k, v in self.graph.config.items() if k not in self.compiled})
        self.kw = Namer({"peers"}).claim(self.compiled)
        self._check_shares()

    # ------------------------------------------------------------------ tensors

    def _param(self, model: str, local: str) -> Param:
        return self.ir.models[model].param_map()[local]

    def _slot(self, model: str, local: str, base: str = "self") -> str:
        p = self._param(model, local)
        return f"{self.trees[model].expr(p.layer, base)}.{p.slot}"

    def tensor(self, key: str, flip: bool = False) -> str:
        """The expression for slot `key`'s tensor, transposed once more if `flip`."""
        b = self.binds[key]
        if not b.transposed:
            base = self._slot(b.model, b.canonical) if b.model == self.name else self._slot(self.name, key)
        elif b.model == self.name:
            base = self._slot(b.model, b.canonical)
        else:
            base = self._slot(b.model, b.canonical, f'self._peers["{b.model}"]')
        if flip != b.transposed:
            if len(self.params[key].shape) != 2:
                raise TieError(f"{self.name}.{key} is read transposed but is not 2-d", self.params[key].span)
            return f"{base}.T"
        return base

    def _check_shares(self) -> None:
        for key, b in self.binds.items():
            if b.group is None or (b.model == self.name and b.canonical == key):
                continue
            mine, canon = self.params[key], self._param(b.model, b.canonical)
            want = tuple(reversed(canon.shape)) if b.transposed else canon.shape
            if mine.shape != want or (b.transposed and len(canon.shape) != 2):
                how = "transposed, " if b.transposed else ""
                raise TieError(
                    f"{self.name}.{key} {list(mine.shape)} cannot share ({how}group {b.group}) "
                    f"{b.model}.{b.canonical} {list(canon.shape)}",
                    mine.span,
                    notes=[(canon.span, "canonical tensor declared here")],
                )
            if b.transposed and self.graph.layer(mine.layer).kind == "SelfAttention":
                raise TieError(
                    f"{self.name}.{key}: an attention projection cannot be shared transposed (group {b.group})",
                    mine.span,
                    hint="share it without transposing, or share a Linear layer's weight instead",
                )

    # ------------------------------------------------------------------ __init__

    def _ctor(self, layer: Layer, used: set[str]) -> str:
        args = {}
        for key, value in layer.config.items():
            args[key], names = config_expr(layer.config_src.get(key), value, self.compiled, self.kw.mapping())
            used |= names
        slots = self.slots.get(layer.path, [])
        extra = []
        if layer.kind in ("LayerNorm", "RMSNorm") and not slots:
            extra.append("elementwise_affine=False")
        elif layer.kind == "LayerNorm" and not any(p.slot == "bias" for p in slots):
            extra.append("bias=False")
        if slots and slots[0].dtype != "f32":
            extra.append(f"dtype=torch.{TORCH_DTYPE[slots[0].dtype]}")
        return TORCH_LAYER[layer.kind](args, tuple(extra))

    def _share_rows(self) -> list[tuple[str, str, str]]:
        rows = []
        for p in self.graph.params:
            b = self.binds[p.name]
            if b.group is None or (b.model == self.name and b.canonical == p.name):
                continue
            canon = b.canonical if b.model == self.name else f"{b.model}.{b.canonical}"
            if b.transposed:
                rows.append((self._slot(self.name, p.name), "None", f"uses {canon}.T (shared: group {b.group})"))
            elif b.model == self.name:
                canonical = self._slot(b.model, b.canonical)
                rows.append((self._slot(self.name, p.name), canonical, f"shared: group {b.group}"))
            else:
                rows.append((f"# {p.name} is {canon} (shared: group {b.group}), aliased by Program", "", ""))
        return rows

    def init_lines(self) -> list[str]:
        used: set[str] = set()
        layers = self.tree.lines(lambda layer: self._ctor(layer, used))
        sig = ", ".join(f"{self.kw(k)}={literal(v)}" for k, v in self.compiled.items())
        sig = ", ".join(s for s in ("self", sig, "*, peers" if self.peers else "") if s)
        out = [f"def __init__({sig}):", "    super().__init__()"]
        for k, v in self.compiled.items():
            if k in self.graph.structural or k not in used:  # baked into the unrolled forward
                msg = f"{self.name}: compiled with {k}={v!r}; recompile with --set {k}=N"
                out += [f"    if {self.kw(k)} != {literal(v)}:", f"        raise ValueError({literal(msg)})"]
        if self.peers:
            out.append("    self._peers = peers  # model name → module: read at call time, owned by the Program")
        out += ["    " + line for line in aligned([(t, v, "") for t, v in layers])]
        shares = self._share_rows()
        if shares:
            out += ["", *("    " + line for line in aligned(shares))]
        return out

    # ------------------------------------------------------------------ forward

    def forward_lines(self) -> list[str]:
        g, types = self.graph, self.ir.types.get(self.name, {})
        inline = inlined_literals(g)
        bound = [i.name for i in g.inputs] + [n.name for n in g.nodes if n.name not in inline]
        py = Namer(self.ir.models).claim(bound)
        args = ", ".join(["self", *(py(i.name) for i in g.inputs)])
        ins = ", ".join(f"{py(i.name)}: {i.type}" for i in g.inputs)
        outs = ", ".join(f"{o.name}: {types[o.value]}" if o.value in types else o.name for o in g.outputs)
        names = local_names(g, py, skip=inline)

        def local(value: str) -> str:
            return inline[value] if value in inline else names[value]

        body = []
        for node in (n for n in g.nodes if n.name not in inline):
            rhs = TORCH_EMIT[node.op](self._call(node, local))
            t = types.get(node.name)
            shape = "" if t is None else f"[{', '.join(map(str, t.shape))}]"
            body.append((f"{local(node.name)} = {rhs}", shape if t is None or t.dtype == "f32" else f"{t.dtype}{shape}"))
        width = max((len(code) for code, _ in body if len(code) <= 60), default=0)
        lines = [f"{code.ljust(width)}  # {c}" if c else code for code, c in body]
        ret = ", ".join(local(o.value) for o in g.outputs)
        return [f"def forward({args}):", f'    """{ins} → {outs}"""', *("    " + x for x in lines), f"    return {ret}"]

    def _call(self, node, py: Callable[[str], str]) -> Call:
        args = tuple(py(v) for v in node.inputs)
        if node.op == "param":
            return Call(args, node.attrs, self.tensor(node.attrs["param"], bool(node.attrs.get("transposed"))))
        if node.op not in TORCH_LAYER:
            return Call(args, node.attrs)
        layer = self.graph.layer(node.attrs["layer"])
        slots = self.slots.get(layer.path, [])
        functional = any(self.binds[p.name].transposed for p in slots)
        table = {p.slot: self.tensor(p.name) for p in slots} if functional else None
        return Call(args, node.attrs, self.tree.expr(layer.path), layer.config, table)

    # ------------------------------------------------------------------ tie_penalty

    def penalty_lines(self) -> list[str]:
        own = [p.name for p in self.graph.params if not self.binds[p.name].transposed]
        zero = f"{self.tensor(own[0])}.new_zeros(())" if own else "torch.zeros(())"
        body = penalty_lines(ties(self.ir, self.name), self.tensor, zero)
        doc = '"""Σ over tie groups of λ · Σ_{i<j} ‖w_i − w_j‖² (l2) or λ · Σ_{i<j} Σ|w_i − w_j| (l1)."""'
        return ["def tie_penalty(self):", "    " + doc, *("    " + x for x in body)]

    def summary(self) -> str:
        tensors = {(b.model, b.canonical) for b in self.binds.values()}
        count = sum(math.prod(self._param(m, c).shape) for m, c in tensors)
        return f"{len(self.params)} parameter slots using {len(tensors)} tensors ({count:,} weights)"
