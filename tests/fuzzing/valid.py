"""Valid specs, drawn stage by stage, with the generator's own bookkeeping of their tensors.

A spec is one model `M` with one input, `x: [B, d]`, token ids `tok: i64[B]` read by an
`Embedding`, or an image read by a `Conv2d`, a pool and a flatten, and a chain of stages, each taking the current value `h` to a new width: Linear layers (plain, called again, `share other_layer`,
`share weight = other.weight.T`), blocks (a residual layer, an MLP, a tied autoencoder whose
decoder reads the encoder's weight transposed), `repeat n { … }` and `repeat n share { … }`, a cell
carried along `h` made a sequence (`repeat x_t in unbind(seq, 1) { … }`),
norms, self-attention over two positions, parameter references (`h @ fc.weight.T`), literal
arithmetic and, after an embedding, an
output layer tied to it (`share weight = emb.weight`); then `share` and
`tie(λ)` statements between layers of matching shapes. Every parameter slot is recorded in a
union-find with orientation (`Book`), so the number of distinct tensors, their values and the
share groups are known without asking the compiler.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

ACTS = ("relu({})", "tanh({})", "sigmoid({})", "silu({})", "gelu({})", 'gelu({}, approximate="tanh")', "{}")
BLOCKS = {
    "Res": "block Res(d) {\n    in x: [B, d]\n    fc = Linear(d, d)\n    return x + relu(fc(x))\n}\n",
    "MLP": ("block MLP(d, hidden = 2 * d) {\n    in x: [B, d]\n    up = Linear(d, hidden)\n"
            "    down = Linear(hidden, d)\n    return down(gelu(up(x)))\n}\n"),
    "Tied": ("block Tied(d, k) {\n    in x: [B, d]\n    enc = Linear(d, k)\n"
             "    dec = Linear(k, d, bias=false) share weight = enc.weight.T\n    return dec(tanh(enc(x)))\n}\n"),
}


class Book:
    """Parameter slots (state-dict keys) in a union-find; `flip` is the orientation to the parent."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.flip: dict[str, bool] = {}
        self.numel: dict[str, int] = {}

    def add(self, key: str, *shape: int) -> None:
        self.parent[key], self.flip[key], self.numel[key] = key, False, 1
        for n in shape:
            self.numel[key] *= n

    def find(self, key: str) -> tuple[str, bool]:
        flipped = False
        while self.parent[key] != key:
            flipped ^= self.flip[key]
            key = self.parent[key]
        return key, flipped

    def share(self, a: str, b: str, transposed: bool = False) -> None:
        """`b` holds `a`'s tensor (transposed)."""
        (ra, fa), (rb, fb) = self.find(a), self.find(b)
        assert ra != rb, (a, b)
        self.parent[rb], self.flip[rb] = ra, fa ^ fb ^ transposed

    def roots(self) -> list[str]:
        return [k for k in self.parent if self.parent[k] == k]

    def groups(self) -> list[list[tuple[str, bool]]]:
        """Share groups of two or more slots: (key, orientation relative to the group's tensor)."""
        out: dict[str, list[tuple[str, bool]]] = {}
        for key in self.parent:
            root, flipped = self.find(key)
            out.setdefault(root, []).append((key, flipped))
        return [g for g in out.values() if len(g) > 1]


@dataclass
class Lin:
    """A Linear layer the spec can refer to: its reference, state-dict prefix and sizes."""

    ref: str
    key: str
    n_in: int
    n_out: int
    bias: bool
    callable: bool = False  # a model-level layer, which can be called again


@dataclass
class Spec:
    """A valid spec and what its generator knows about it."""

    text: str
    inputs: list[dict]  # per input: name, shape (B = 3), dtype, and for token ids their bound
    tensors: int
    numel: int
    groups: list[list[tuple[str, bool]]] = field(default_factory=list)

    def expect(self) -> dict:
        return {"inputs": self.inputs, "tensors": self.tensors, "numel": self.numel, "groups": self.groups}


class _Builder:
    def __init__(self, draw, width: int):
        self.draw, self.w, self.book = draw, width, Book()
        self.lines: list[str] = []
        self.lins: list[Lin] = []
        self.blocks: set[str] = set()
        self.instances: list[tuple[str, int]] = []  # block instances that can be called again: (name, width)
        self.vocab = self.embed_dim = 0  # the embedding's size, when the model starts with one

    def size(self) -> int:
        return self.draw(st.integers(2, 5))

    def act(self, expr: str) -> str:
        return self.draw(st.sampled_from(ACTS)).format(expr)

    def linear(self, ref: str, key: str, n_in: int, n_out: int, bias: bool, **kw) -> Lin:
        self.book.add(f"{key}.weight", n_out, n_in)
        if bias:
            self.book.add(f"{key}.bias", n_out)
        lin = Lin(ref, key, n_in, n_out, bias, **kw)
        self.lins.append(lin)
        return lin

    def stage(self, i: int) -> None:
        w, say = self.w, self.lines.append
        kind = self.draw(st.sampled_from(("linear", "linear", "reuse", "share_all", "share_t", "block", "again",
                                          "repeat", "norm", "param_ref", "arith", "tied_head", "attention",
                                          "scan")))
        square = [x for x in self.lins if x.callable and x.n_in == x.n_out == w]
        takes_w = [x for x in self.lins if x.callable and x.n_in == w]
        gives_w = [x for x in self.lins if x.n_out == w]
        if kind == "reuse" and square:
            say(f"    h = {self.act(self.draw(st.sampled_from(square)).ref + '(h)')}")
        elif kind == "share_all" and takes_w:
            other = self.draw(st.sampled_from(takes_w))
            lin = self.linear(f"fc{i}", f"fc{i}", w, other.n_out, other.bias, callable=True)
            say(f"    fc{i} = Linear({w}, {other.n_out}{'' if other.bias else ', bias=false'}) share {other.ref}")
            self.book.share(f"{other.key}.weight", f"{lin.key}.weight")
            if other.bias:
                self.book.share(f"{other.key}.bias", f"{lin.key}.bias")
            say(f"    h = {self.act(f'fc{i}(h)')}")
            self.w = other.n_out
        elif kind == "share_t" and gives_w:
            other, bias = self.draw(st.sampled_from(gives_w)), self.draw(st.booleans())
            lin = self.linear(f"fc{i}", f"fc{i}", w, other.n_in, bias, callable=True)
            say(f"    fc{i} = Linear({w}, {other.n_in}{'' if bias else ', bias=false'}) "
                f"share weight = {other.ref}.weight.T")
            self.book.share(f"{other.key}.weight", f"{lin.key}.weight", transposed=True)
            say(f"    h = {self.act(f'fc{i}(h)')}")
            self.w = other.n_in
        elif kind == "block":
            say(f"    {self.block(f'b{i}', [(f'b{i}', f'b{i}')])}")
            say(f"    h = b{i}(h)")
            self.instances.append((f"b{i}", w))
        elif kind == "again" and any(n == w for _, n in self.instances):
            say(f"    h = {self.draw(st.sampled_from([b for b, n in self.instances if n == w]))}(h)")
        elif kind == "repeat":
            self.repeat(i)
        elif kind == "norm":
            norm = self.draw(st.sampled_from(("LayerNorm", "RMSNorm")))
            say(f"    n{i} = {norm}({w})")
            self.book.add(f"n{i}.weight", w)
            if norm == "LayerNorm":
                self.book.add(f"n{i}.bias", w)
            say(f"    h = n{i}(h)")
        elif kind == "param_ref" and (takes_w or gives_w):
            other = self.draw(st.sampled_from(takes_w + gives_w))
            if other.n_in == w and (other.n_out != w or self.draw(st.booleans())):
                say(f"    h = h @ {other.ref}.weight.T" + (f" + {other.ref}.bias" if other.bias else ""))
                self.w = other.n_out
            else:
                say(f"    h = {self.act(f'h @ {other.ref}.weight')}")
                self.w = other.n_in
        elif kind == "tied_head" and self.vocab and w == self.embed_dim:
            if self.draw(st.booleans()):
                self.book.add(f"fc{i}.weight", self.vocab, w)
                self.book.share("emb.weight", f"fc{i}.weight")
                say(f"    fc{i} = Linear({w}, {self.vocab}, bias=false) share weight = emb.weight")
                say(f"    h = fc{i}(h)")
            else:
                say("    h = h @ emb.weight.T")
            self.w = self.vocab
        elif kind == "attention" and w % 2 == 0:  # [B, w] as [B, 2, w/2]: two positions, causal or not
            causal = self.draw(st.booleans())
            heads = self.draw(st.sampled_from([n for n in (1, 2) if (w // 2) % n == 0]))
            d = w // 2
            for slot, shape in (("in_proj_weight", (3 * d, d)), ("in_proj_bias", (3 * d,)),
                                ("out_proj.weight", (d, d)), ("out_proj.bias", (d,))):
                self.book.add(f"a{i}.{slot}", *shape)
            say(f"    a{i} = SelfAttention({d}, {heads}{', causal=true' if causal else ''})")
            say(f"    h = flatten(a{i}(reshape(h, [0, 2, -1])))")
        elif kind == "scan":  # h as a sequence of 1 to 3 steps, a cell carried along it
            steps = self.draw(st.integers(1, 3))
            self.linear(f"s{i}", f"s{i}", w, w, True, callable=True)
            say(f"    seq{i} = concat([{', '.join(['unsqueeze(h, 1)'] * steps)}], dim=1)")
            say(f"    repeat x_t in unbind(seq{i}, 1) {{")
            say(f"        s{i} = Linear({w}, {w})")  # one layer for every step
            say(f"        h = {self.act(f's{i}(x_t) + h')}")
            say(f"        y{i} = h * 0.5")
            say("    }")
            say(f"    h = h + mean(y{i}, 1)")
        elif kind == "arith":
            say(f"    h = {self.draw(st.sampled_from(('h * 0.5 - 1', '-h + h / 2', '2 * h', 'h - h * h')))}")
        else:
            out, bias = self.size(), self.draw(st.booleans())
            self.linear(f"fc{i}", f"fc{i}", w, out, bias, callable=True)
            say(f"    fc{i} = Linear({w}, {out}{'' if bias else ', bias=false'})")
            say(f"    h = {self.act(f'fc{i}(h)')}")
            self.w = out

    def block(self, name: str, copies: list[tuple[str, str]]) -> str:
        """The line declaring block instance `name` at width w; its slots recorded once per copy
        (reference, state-dict prefix)."""
        w, kind = self.w, self.draw(st.sampled_from(sorted(BLOCKS)))
        self.blocks.add(kind)
        hidden = self.draw(st.sampled_from((None, 3))) if kind == "MLP" else None
        k = self.size() if kind == "Tied" else 2 * w if hidden is None else hidden
        for ref, key in copies:
            if kind == "Res":
                self.linear(f"{ref}.fc", f"{key}.fc", w, w, True)
            elif kind == "MLP":
                self.linear(f"{ref}.up", f"{key}.up", w, k, True)
                self.linear(f"{ref}.down", f"{key}.down", k, w, True)
            else:
                self.linear(f"{ref}.enc", f"{key}.enc", w, k, True)
                self.book.add(f"{key}.dec.weight", w, k)
                self.book.share(f"{key}.enc.weight", f"{key}.dec.weight", transposed=True)
        args = {"Res": f"{w}", "MLP": f"{w}" + ("" if hidden is None else f", hidden={hidden}"), "Tied": f"{w}, {k}"}
        return f"{name} = {kind}({args[kind]})"

    def repeat(self, i: int) -> None:
        n, shared, plain = self.draw(st.integers(1, 3)), self.draw(st.booleans()), self.draw(st.booleans())
        name, w = f"r{i}", self.w
        copies = [(name, name)] if shared else [(f"{name}[{c}]", f"{name}.{c}") for c in range(n)]
        if plain:
            for ref, key in copies:
                self.linear(ref, key, w, w, True)
            body = [f"{name} = Linear({w}, {w})", f"h = {self.act(f'{name}(h)')}"]
        else:
            body = [self.block(name, copies), f"h = {name}(h)"]
        self.lines.append(f"    repeat {n}{' share' if shared else ''} {{")
        self.lines.extend(f"        {line}" for line in body)
        self.lines.append("    }")

    def relations(self) -> None:
        for _ in range(self.draw(st.integers(0, 2))):  # share statements between separate tensors
            pairs = [(a, b, t) for a in self.lins for b in self.lins if a is not b
                     for t in (False, True) if ((b.n_out, b.n_in) if t else (b.n_in, b.n_out)) == (a.n_in, a.n_out)
                     and self.book.find(f"{a.key}.weight")[0] != self.book.find(f"{b.key}.weight")[0]]
            if not pairs:
                break
            a, b, t = self.draw(st.sampled_from(pairs))
            self.lines.append(f"    share {a.ref}.weight, {b.ref}.weight{'.T' if t else ''}")
            self.book.share(f"{a.key}.weight", f"{b.key}.weight", transposed=t)
        for _ in range(self.draw(st.integers(0, 2))):
            pairs = [(a, b) for a in self.lins for b in self.lins if a is not b
                     and {(a.n_in, a.n_out), (a.n_out, a.n_in)} & {(b.n_in, b.n_out)}]
            if not pairs:
                break
            a, b = self.draw(st.sampled_from(pairs))
            lam, norm = self.draw(st.sampled_from(("0.01", "0.5", "2"))), self.draw(st.sampled_from(("", ", norm=l1")))
            if (a.n_in, a.n_out, a.bias) == (b.n_in, b.n_out, b.bias) and self.draw(st.booleans()):
                self.lines.append(f"    tie({lam}{norm}) {a.ref}, {b.ref}")
            else:
                t = (a.n_in, a.n_out) != (b.n_in, b.n_out)
                self.lines.append(f"    tie({lam}{norm}) {a.ref}.weight, {b.ref}.weight{'.T' if t else ''}")


@st.composite
def valid_specs(draw) -> Spec:
    """A spec that must compile, run and export, with its generator's bookkeeping."""
    width = draw(st.integers(2, 5))
    b = _Builder(draw, width)
    w = "w" if draw(st.booleans()) else str(width)
    head = f"model M(w = {width}) {{" if w == "w" else "model M {"
    front = draw(st.sampled_from(("x", "tok", "img")))
    if front == "img":  # a convolution, a pool and a flatten make the [B, width] the chain starts from
        c, k = draw(st.integers(1, 2)), draw(st.integers(1, 3))
        b.book.add("conv.weight", k, c, 3, 3)
        b.book.add("conv.bias", k)
        pool = draw(st.sampled_from(("max_pool2d", "avg_pool2d")))
        x, start = "img", [f"    in img: [B, {c}, 4, 4]", f"    conv = Conv2d({c}, {k}, 3, padding=1)",
                           f"    h = flatten({pool}(relu(conv(img)), 2))"]
        inputs = [{"name": "img", "shape": [3, c, 4, 4], "dtype": "f32"}]
        b.w = 4 * k
    elif front == "tok":
        b.vocab, b.embed_dim, x = draw(st.integers(2, 6)), width, "tok"
        b.book.add("emb.weight", b.vocab, width)
        start = ["    in tok: i64[B]", f"    emb = Embedding({b.vocab}, {w})", "    h = emb(tok)"]
        inputs = [{"name": "tok", "shape": [3], "dtype": "i64", "high": b.vocab}]
    else:
        dim = draw(st.sampled_from((w, "D")))  # a symbol the first layer pins down
        x, start = "x", [f"    in x: [B, {dim}]", "    h = x"]
        inputs = [{"name": "x", "shape": [3, width], "dtype": "f32"}]
    for i in range(draw(st.integers(1, 6))):
        b.stage(i)
    b.relations()
    ret = draw(st.sampled_from(("h", "h, softmax(h, dim=-1)", f"h, {x}")))
    body = "\n".join([head, *start, *b.lines, f"    return {ret}", "}"]) + "\n"
    text = "".join(BLOCKS[k] for k in sorted(b.blocks)) + body
    roots = b.book.roots()
    return Spec(text, inputs, len(roots), sum(b.book.numel[r] for r in roots), b.book.groups())
