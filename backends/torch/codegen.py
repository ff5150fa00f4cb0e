"""The one PyTorch code generator: `ProgramIR` → standalone Python source.

The emitted file imports only torch (and math when a literal needs it) and reads like a careful
hand-written model: a class per block definition, `nn.ModuleList` and `for` loops for repeats,
constructor arguments that configure the model, and one commented line per share group. Its
state-dict keys are the IR's parameter names, so existing checkpoints load strictly.
`build_module` compiles this same text; nothing else produces a live module, so the two cannot
drift apart. A program without structure (IR built by hand) is emitted flat, one class per model.
"""
from __future__ import annotations

import re
from dataclasses import replace

from tiec.compiler import ir
from tiec.compiler.ir import Binding, ProgramIR, bindings, split, ties
from tiec.dsl.diagnostics import TieError, did_you_mean

from .classes import SubgraphClass, aligned, attr, chain, summary
from .naming import EMITTED_GLOBALS, EMITTED_LOCALS, Namer, doc_text
from .penalty import init_lines, method_lines, penalty_lines, tie_attrs
from .plan import Plan, copies
from .retie import block_calls, needs_retie, retie_method
from .schedules import schedule_aliases
from .tree import MODULE_ATTRS

# Each import is emitted only when the body uses it, so the file is lint-clean as emitted.
_IMPORTS = [
    (r"\bmath\.(inf|nan|exp|log|sqrt|pow)\b", "import math"),
    (r"\btorch\.", "import torch"),
    (r"\bnn\.", "import torch.nn as nn"),
    (r"\bF\.", "import torch.nn.functional as F"),
]

def _transposed(layer: str, what: str, signature: str, init: list[str], forward: str) -> list[str]:
    """A layer class that reads its weight as another layer's parameter, transposed."""
    return [
        f"class Transposed{layer}(nn.Module):",
        f'    """nn.{layer} whose {what} is another layer\'s parameter, read transposed: it stores no {what}."""',
        "",
        f"    def __init__(self, {signature}):",
        "        super().__init__()",
        *("        " + line for line in init),
        "        self.owner = None  # (module, parameter name): set by the module that shares it",
        "",
        "    @property",
        "    def weight(self):",
        "        module, name = self.owner",
        "        return getattr(module, name).T",
        "",
        "    def forward(self, x):",
        f"        return {forward}",
    ]


_HELPERS = {
    "causal_mask(": [
        "def causal_mask(x):",
        '    """True above the diagonal: position t may not attend to later positions (x: [..., T, E])."""',
        "    T = x.shape[-2]",
        "    return torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)",
    ],
    "TransposedLinear(": _transposed(
        "Linear", "weight", "in_features, out_features, bias=True, dtype=None", [
            "self.in_features, self.out_features = in_features, out_features",
            "bound = in_features ** -0.5",
            "self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype).uniform_(-bound, bound)) if bias else None",
        ], "F.linear(x, self.weight, self.bias)"),
    "TransposedEmbedding(": _transposed(
        "Embedding", "table", "num_embeddings, embedding_dim, dtype=None",
        ["self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim"], "F.embedding(x, self.weight)"),
    "Conv1D(": [
        "class Conv1D(nn.Module):",
        '    """HF GPT-2\'s Conv1D: a linear layer that stores its weight [in, out], y = x W + b."""',
        "",
        "    def __init__(self, nf, nx, dtype=None):",
        "        super().__init__()",
        "        self.nf = nf",
        "        self.weight = nn.Parameter(torch.empty(nx, nf, dtype=dtype).normal_(std=0.02))",
        "        self.bias = nn.Parameter(torch.zeros(nf, dtype=dtype))",
        "",
        "    def forward(self, x):",
        "        return x @ self.weight + self.bias",
    ],
    "RotaryEmbedding(": [
        "class RotaryEmbedding(nn.Module):",
        '    """Rotary position embedding tables, as HF\'s LlamaRotaryEmbedding: cos and sin of t · inv_freq for',
        "    the positions t of the input's dim -2, in the input's dtype. inv_freq = theta^(-2i/head_dim) in f32,",
        '    computed here and kept out of the state dict (a non-persistent buffer)."""',
        "",
        "    def __init__(self, head_dim, theta=10000.0):",
        "        super().__init__()",
        "        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))",
        '        self.register_buffer("inv_freq", inv_freq, persistent=False)',
        "",
        "    def forward(self, x):",
        "        t = torch.arange(x.shape[-2], device=x.device, dtype=torch.float)",
        "        freqs = t[:, None] * self.inv_freq.float()",
        "        angles = torch.cat((freqs, freqs), dim=-1)",
        "        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)",
    ],
}
HELPER_NAMES = frozenset({"causal_mask", "TransposedLinear", "TransposedEmbedding", "Conv1D", "RotaryEmbedding"})


def class_names(ir: ProgramIR) -> dict[str | None, str]:
    """Model name → class name, and None → the all-models class.

    A model keeps its name unless that would shadow an import, a helper or a local of the emitted
    code (`F` → `F_`, `peers` → `peers_`); the all-models class is `Program` unless a model took it,
    then `Program_`. So a model's class has the same name whether emitted alone or with the rest.
    """
    namer = Namer(EMITTED_LOCALS | HELPER_NAMES).claim(ir.models)
    names: dict[str | None, str] = {m: namer(m) for m in ir.models}
    names[None] = namer.fresh("Program")
    return names


def generate_source(ir: ProgramIR, model: str | None = None) -> str:
    """Python source for one model's `nn.Module`, or for every model plus a `Program` holding them.

    Args:
        ir: a verified program (shapes and share/tie groups filled in).
        model: the model to emit; None emits a class per model and `Program` (see `class_names`), in which
            parameters shared across models are aliased. A program of one model needs no `Program`.

    Returns:
        The source text: deterministic for a given IR.
    """
    if model is not None and model not in ir.models:
        hint = did_you_mean(model, ir.models) or f"models: {', '.join(ir.models)}"
        raise ValueError(f"no model {model!r} in {ir.source.name}; {hint}")
    names = class_names(ir)
    chosen = [model] if model is not None else list(ir.models)
    alone = model is not None or len(chosen) == 1
    if alone:  # one model's own view: a group across models, restricted to it, re-picks its canonical
        m = chosen[0]
        local = bindings(ir, m, grouped=True)  # a slot in no group is its own tensor
        binds = {ir_q(m, k): Binding(ir_q(m, b.canonical), b.transposed, b.group) for k, b in local.items()}
        by_model = {m: local}
    else:
        binds = bindings(ir, None)
        by_model = {m: {} for m in chosen}
        for k, b in binds.items():
            owner, key = split(k)
            by_model[owner][key] = Binding(split(b.canonical)[1], b.transposed, b.group)
    emitter = _Emitter(ir, chosen, names, binds, by_model)
    blocks = emitter.classes()
    if not alone:
        blocks.append(emitter.program_class(names[None]))
    body = "\n\n\n".join("\n".join(b) for b in blocks)
    helpers = [lines for marker, lines in _HELPERS.items() if marker in body]
    if helpers:
        body = "\n\n\n".join("\n".join(h) for h in helpers) + "\n\n\n" + body
    imports = [line for pattern, line in _IMPORTS if re.search(pattern, body)]
    if imports[:1] == ["import math"] and len(imports) > 1:
        imports.insert(1, "")  # standard library, then torch
    return "\n".join([*_docstring(ir, chosen[0] if alone else None, names[None]), *imports, "", "", body]) + "\n"


def ir_q(model: str, local: str) -> str:
    return f"{model}.{local}"


def _docstring(ir: ProgramIR, model: str | None, program: str) -> list[str]:
    what = f"Model {model}" if model is not None else f"Models {', '.join(ir.models)} and `{program}` holding them"
    return [
        f'"""{what}, generated by tiec from {doc_text(ir.source.name)}.',
        "",
        "Edit the spec and recompile rather than this file. A shared parameter is one tensor: aliased",
        "(`self.b.weight = self.a.weight`, both state-dict keys), or, shared transposed, read by a",
        "`Transposed…` layer that stores no weight of its own (one state-dict key).",
        '"""',
    ]


class _Emitter:
    """The classes of one emitted file: blocks (deduplicated by their text), then models."""

    def __init__(self, program: ProgramIR, models: list[str], names: dict, binds: dict[str, ir.Binding],
                 by_model: dict[str, dict[str, ir.Binding]]):
        self.ir, self.models, self.names, self.binds, self.by_model = program, models, names, binds, by_model
        self.slots: dict[str, list[str]] = {}
        self.structured = all(m in program.structure for m in models)
        self.plan = Plan(program, models, binds) if self.structured else None
        self.reserved = set(program.models) | EMITTED_GLOBALS | HELPER_NAMES | set(names.values())
        self.class_of: dict[tuple[str, str], str] = {}  # (model, site path) → class name
        self.texts: dict[tuple, str] = {}  # class body → class name
        self.out: list[list[str]] = []
        self.namer = Namer(self.reserved)
        self.variants: dict[tuple, str] = {}  # (key, children's classes, slots read transposed) → class
        self.retie_keys: set[str] = set()  # blocks whose classes have `retie`

    def _ties(self, model: str) -> tuple[ir.TieGroup, ...]:
        """`ties(ir, model)`, for every model at once: a file may hold a thousand models."""
        if not hasattr(self, "_tie_buckets"):
            self._tie_buckets: dict[str, list[ir.TieGroup]] = {}
            owners = {t.id: {split(m.param)[0] for m in t.members} for t in self.ir.tie_groups}
            for t in self.ir.tie_groups:
                if len(owners[t.id]) == 1:
                    m = next(iter(owners[t.id]))
                    self._tie_buckets.setdefault(m, []).append(replace(
                        t, members=tuple(ir.Member(split(x.param)[1], x.transposed, x.span) for x in t.members)))
        return tuple(self._tie_buckets.get(model, ()))

    def _types(self, key: str, model: str) -> dict[str, ir.TensorType]:
        return dict(self.ir.local_types.get(key, {}))

    def classes(self) -> list[list[str]]:
        if self.structured:
            for key in self.ir.blocks:  # a block's subgraph is complete before any that uses it
                for site in self.plan.sites.get(key, ()):
                    self._block_class(key, site)
        for m in self.models:
            self.out.append(self._model_class(m))
        return self.out

    def _children(self, sub: ir.Subgraph, model: str, prefix: str) -> dict[str, str]:
        out = {}
        for inst in sub.instances:
            if inst.block is not None:
                for path in copies(sub, inst):
                    out[path] = self.class_of[(model, prefix + path)]
        return out

    def _block_class(self, key: str, site) -> None:
        sub = self.ir.blocks[key]
        prefix = site.path + "."
        children = self._children(sub, site.model, prefix)
        flipped = frozenset(p for p in self._own_slots(sub) if self.plan.transposed(site.model, prefix + p)) \
            if self.plan.any_transposed else frozenset()
        signature = (key, tuple(sorted(children.items())), flipped)
        known = self.variants.get(signature)
        if known is not None:
            self.class_of[(site.model, site.path)] = known
            return
        shares = [self._share_row(site.model, g, prefix, local=True) for g in self.plan.block_groups[key]]
        cls = SubgraphClass(sub, sub.definition, self.ir.blocks, children,
                            lambda path: self.plan.transposed(site.model, prefix + path),
                            [r for rows in shares for r in rows], self._types(key, site.model), self.reserved,
                            loop_shares=self.plan.loop_groups.get(key, []))
        params = ", ".join(f"{k}={v!r}" for k, v in sub.params.items())
        retie = needs_retie(sub, cls.share_lines(), self.retie_keys)
        self.retie_keys |= {key} if retie else set()
        text = self._render(cls, f"{sub.definition}({params}) as compiled; the arguments configure it",
                            [retie_method(cls.share_lines(), block_calls(sub, self.retie_keys))] if retie else [])
        name = self.texts.get(text)
        if name is None:
            name = self.namer.fresh(sub.definition)
            self.texts[text] = name
            self.out.append([line.replace("CLASS", name) if i == 0 else line for i, line in enumerate(text)])
        self.class_of[(site.model, site.path)] = name
        self.variants[signature] = name

    def _own_slots(self, sub: ir.Subgraph) -> list[str]:
        from tiec.compiler.catalog import LAYERS

        if sub.key in self.slots:
            return self.slots[sub.key]
        out = self.slots[sub.key] = []
        for inst in sub.instances:
            if inst.layer is not None:
                slots = [s for s, _ in LAYERS[inst.layer.kind].slots(inst.layer.config)]
                out += [f"{c}.{s}" for c in copies(sub, inst) for s in slots]
        return out

    def _render(self, cls: SubgraphClass, doc: str, extra: list[list[str]] | None = None) -> tuple[str, ...]:
        methods = [cls.init_lines(), cls.forward_lines(self.reserved)] + (extra or [])
        out = ["class CLASS(nn.Module):", f'    """{doc}."""', ""]
        for i, lines in enumerate(methods):
            out += ([""] if i else []) + ["    " + x if x else "" for x in lines]
        return tuple(out)

    def _share_row(self, model: str, group, prefix: str, local: bool) -> list[tuple[str, str, str]]:
        """Lines aliasing a group's members to its canonical: (target, value, comment)."""
        members = [(m, t) for m, t in group] if local else [(split(k)[1], self.binds[k].transposed) for k in group]
        start = len(prefix) if local else 0
        canon = members[0][0]
        label = "shared" if local else f"shared: group {self.binds[ir.qualify(model, canon)].group}"
        rows = []
        for name, flipped in members[1:]:
            if flipped:
                owner, _, slot = canon.rpartition(".")
                layer = name.rpartition(".")[0]
                source = f'({self._path(model, owner, start)}, "{slot}")'
                rows.append((f"{self._path(model, layer, start)}.owner", source, f"{label}, read transposed"))
            else:
                rows.append((self._path(model, name, start), self._path(model, canon, start), label))
        return rows

    def _path(self, model: str, path: str, start: int = 0, base: str = "self") -> str:
        if self.structured or not path:  # the empty path: the module itself (a free parameter's owner)
            return chain(base, path)
        graph = self.ir.models[model]
        from .tree import ModuleTree

        tree = ModuleTree(graph)
        for lay in graph.layers:
            if path == lay.path:
                return tree.expr(path, base)
            if path.startswith(lay.path + "."):
                return f"{tree.expr(lay.path, base)}.{path[len(lay.path) + 1:]}"
        return tree.expr(path, base)

    def _model_class(self, model: str) -> list[str]:
        params = ir.declared_params(self.ir, model)
        binds = {k: b for k, b in self.binds.items() if split(k)[0] == model} if not self.structured else {}
        local_binds = self.by_model[model]
        if self.structured:
            sub = self.ir.structure[model]
            groups = self.plan.model_groups(model)
            legacy = None
        else:
            legacy = self.ir.models[model]
            sub = _legacy_subgraph(legacy)
            groups = _groups_of(binds, model)
        shares = [r for g in groups for r in self._share_row(model, g, "", local=False)]
        cls = SubgraphClass(sub, self.names[model], self.ir.blocks, self._children(sub, model, "") if legacy is None
                            else {}, lambda path: self.plan.transposed(model, path) if self.plan
                            else bool(local_binds.get(path) and local_binds[path].transposed),
                            shares, self._types(model, model) if legacy is None else dict(self.ir.types.get(model, {})),
                            self.reserved, legacy, loop_shares=self.plan.loop_groups.get(model, []) if self.plan else [])
        if legacy is None:  # a scheduled repeat: one loop aliasing each copy to its owner, not a line per slot
            cls.schedule_init, groups = schedule_aliases(sub, groups, lambda k: self.binds[k].transposed,
                                                         set(cls.kw.mapping().values()), self.ir.blocks)
            cls.shares = [r for g in groups for r in self._share_row(model, g, "", local=False)]
        own = next((p.name for p in params if not (p.name in local_binds and local_binds[p.name].transposed)), None)
        zero = f"torch.zeros((), device={self._path(model, own)}.device)" if own else "torch.zeros(())"
        groups_t = self._ties(model)

        def member(key: str, flip: bool) -> str:
            return self._path(model, key) + (".T" if flip else "")

        methods = cls.tie_methods(groups_t, member, zero)
        calls = block_calls(sub, self.retie_keys) if legacy is None else []
        methods.append(retie_method(cls.share_lines() + cls.schedule_init, calls))
        text = self._render(cls, f"{model}: {summary(list(params), local_binds)}", methods)
        name = self.names[model]
        return [line.replace("CLASS", name) if i == 0 else line for i, line in enumerate(text)]

    def program_class(self, name: str) -> list[str]:
        for m in self.models:
            if m in MODULE_ATTRS or not m.isidentifier():
                span = self.ir.structure[m].span if m in self.ir.structure else self.ir.models[m].span
                raise TieError(f"model name '{m}' cannot be a submodule of Program", span)
        init = ["def __init__(self):", "    super().__init__()"]
        init += ["    " + x for x in aligned([(attr("self", m), f"{self.names[m]}()", "") for m in self.models])]
        groups = self.plan.program_groups() if self.plan else _cross_groups(self.binds)
        rows = []
        for g in groups:
            canon = g[0]
            for key in g[1:]:
                b = self.binds[key]
                m, local = split(key)
                cm, clocal = split(canon)
                if b.transposed:
                    owner, _, slot = clocal.rpartition(".")
                    rows.append((f"{self._path(m, local.rpartition('.')[0], base=attr('self', m))}.owner",
                                 f"({self._path(cm, owner, base=attr('self', cm))}, \"{slot}\")",
                                 f"shared: group {b.group}, read transposed"))
                else:
                    rows.append((self._path(m, local, base=attr("self", m)),
                                 self._path(cm, clocal, base=attr("self", cm)), f"shared: group {b.group}"))
        if rows:
            init += ["", *("    " + x for x in aligned(rows))]

        def member(key: str, flip: bool) -> str:
            m, local = split(key)
            return self._path(m, local, base=attr("self", m)) + (".T" if flip else "")

        own = [k for k, b in self.binds.items() if not b.transposed]
        zero = f"torch.zeros((), device={member(own[0], False)}.device)" if own else "torch.zeros(())"
        groups_t = ties(self.ir)
        attrs = replace(tie_attrs(groups_t, self.models), anchors={})  # anchors are the models' own buffers
        owned = {m: tie_attrs(self._ties(m), self._instance_names(m)) for m in self.models}
        anchored = [m for m in self.models if owned[m].anchors]

        def anchor(group: ir.TieGroup, key: str) -> str:  # an anchor lives in the one model its tie is in
            m = split(group.members[0].param)[0]
            return f"{attr('self', m)}.{owned[m].anchors[key]}"

        doc = '"""Σ over every tie group, those across models too (formula as in each model\'s tie_penalty)."""'
        body = penalty_lines(groups_t, member, zero, attrs=attrs, anchor=anchor,
                             loaded=[f"{attr('self', m)}.{owned[m].loaded}" for m in anchored])
        methods = [["def tie_penalty(self):", "    " + doc, *("    " + x for x in body)]]
        methods += method_lines(groups_t, attrs, tied=[attr("self", m) for m in self.models if self._ties(m)],
                                anchored=[attr("self", m) for m in anchored])
        methods.append(retie_method(aligned(rows), [f"{attr('self', m)}.retie()" for m in self.models]))
        if groups_t:
            init += ["", *("    " + x for x in init_lines(groups_t, attrs, member))]
        out = [f"class {name}(nn.Module):",
               f'    """Every model of {doc_text(self.ir.source.name)}; parameters shared across models are one tensor."""',
               "", *("    " + x if x else "" for x in init)]
        for lines in methods:
            out += ["", *("    " + x if x else "" for x in lines)]
        return out

    def _instance_names(self, model: str) -> list[str]:
        """The names a model's class gives its submodules (what its tie state's names must avoid)."""
        if self.structured:
            return [i.name for i in self.ir.structure[model].instances]
        return [lay.path.split(".")[0] for lay in self.ir.models[model].layers]


def _legacy_subgraph(graph: ir.Graph) -> ir.Subgraph:
    """A flat graph as a subgraph with no structure (a program whose IR was built by hand)."""
    return ir.Subgraph(graph.name, "model", graph.name, graph.config,
                       ir.frozen({k: repr(v) for k, v in graph.defaults.items()}), graph.inputs, (), graph.nodes,
                       graph.outputs, ir.frozen(), graph.structural, (), graph.span)


def _groups_of(binds: dict[str, ir.Binding], model: str) -> list[list[str]]:
    members: dict[int, list[str]] = {}
    for k, b in binds.items():
        if b.group is not None:
            members.setdefault(b.group, []).append(k)
    return [ms for ms in members.values() if all(split(k)[0] == model for k in ms) and len(ms) > 1]


def _cross_groups(binds: dict[str, ir.Binding]) -> list[list[str]]:
    members: dict[int, list[str]] = {}
    for k, b in binds.items():
        if b.group is not None:
            members.setdefault(b.group, []).append(k)
    return [ms for ms in members.values() if len({split(k)[0] for k in ms}) > 1]
