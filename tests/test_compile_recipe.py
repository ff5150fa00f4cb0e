"""`tiec.compile`: which classes are blocks, and that compiling keeps numerics, keys and sharing
while tracing each block class once. Tiny models under `aot_eager` (seconds, not minutes); no
timing here: benchmarks/compile_cold.py measures cold start and step time with inductor.
"""
from __future__ import annotations

import copy
import pickle
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import tiec
import tiec.compile as tc
from tiec import tied_rest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
VOCAB, D, HEADS, T = 50, 16, 2, 8


def gpt(layers: int = 3):
    """A tiny GPT-2 with its own Block class (a fresh class per call: marking one is global)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.fc, self.proj = nn.LayerNorm(D), nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

        def forward(self, x):
            return x + self.proj(F.gelu(self.fc(self.ln(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(VOCAB, D), nn.Embedding(T, D)
            self.h = nn.ModuleList(Block() for _ in range(layers))
            self.lm_head = nn.Linear(D, VOCAB, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, tokens):
            x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[-1]))
            for block in self.h:
                x = block(x)
            return self.lm_head(x)

    torch.manual_seed(0)
    return GPT()


def emitted(layers: int = 3, d: int = D):
    """tiec's own GPT-2 module (`Block` classes in a ModuleList); each `d` is a fresh class."""
    program = tiec.load(EXAMPLES / "gpt2_small.tie",
                        {"layers": layers, "d": d, "heads": HEADS, "vocab": VOCAB, "context": T})
    return program.torch(model="GPT2Small")


class Recorder:
    """A backend that keeps each dynamo graph and runs it with aot_eager."""

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def region_calls(self) -> tuple[int, int]:
        """(calls of nested compile regions, distinct region subgraphs) over all graphs."""
        calls = [n for g in self.graphs for n in g.graph.nodes if n.target is torch.ops.higher_order.invoke_subgraph]
        return len(calls), len({(id(n.graph), n.args[0].target) for n in calls})


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def step(module: nn.Module, tokens: torch.Tensor, targets: torch.Tensor):
    module.zero_grad(set_to_none=True)
    loss = F.cross_entropy(module(tokens).flatten(0, 1), targets.flatten())
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters()}


def check_same_as_eager(module: nn.Module, compiled: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    tokens, targets = (torch.randint(0, VOCAB, (2, T), generator=gen) for _ in range(2))
    want_loss, want_grads = step(module, tokens, targets)
    for _ in range(2):  # the second call runs the compiled code without compiling again
        loss, grads = step(compiled, tokens, targets)
        torch.testing.assert_close(loss, want_loss, rtol=1e-3, atol=1e-5)
        assert grads.keys() == want_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, want_grads[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("make", [gpt, emitted], ids=["hand-written", "emitted"])
def test_regions_trace_each_block_once_and_keep_numerics(make):
    module = make(3)
    eager = copy.deepcopy(module)
    keys = list(module.state_dict())
    rec = Recorder()
    assert tc.compile(module, rest="compiled", backend=rec) is module
    check_same_as_eager(eager, module)
    assert list(module.state_dict()) == keys
    assert module.lm_head.weight is module.wte.weight
    assert len(rec.graphs) == 1, "the whole model is one graph"
    assert rec.region_calls() == (3, 1), "three calls of one block subgraph"
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("make", [gpt, lambda n: emitted(n, d=24)], ids=["hand-written", "emitted"])
def test_eager_rest_compiles_one_graph_per_block_class(make):
    module = make(3)
    eager = copy.deepcopy(module)
    rec = Recorder()
    assert tc.compile(module, backend=rec) is module  # rest="eager" is the default
    check_same_as_eager(eager, module)
    assert module.lm_head.weight is module.wte.weight
    assert len(rec.graphs) == 1 and counters["stats"]["unique_graphs"] == 1, "three blocks, one graph, no recompile"
    assert rec.region_calls() == (0, 0)


def test_eager_rest_gives_a_tied_lookup_a_sparse_gradient_and_keeps_grad_dense():
    module = emitted(2, d=24)
    eager = copy.deepcopy(module)
    tc.compile(module, backend="aot_eager")
    assert type(module.wte) is tc.SparseGradEmbedding, "wte.weight is lm_head.weight"
    assert type(module.wpe) is nn.Embedding, "an untied lookup keeps its dense gradient"
    tokens = torch.randint(0, VOCAB, (2, T))
    assert module.wte(tokens).grad_fn._saved_sparse and not eager.wte(tokens).grad_fn._saved_sparse
    check_same_as_eager(eager, module)  # the head's dense gradient plus the lookup's rows
    assert module.wte.weight.grad.layout == torch.strided
    for m in (module, eager):  # the lookup's gradient alone: still dense, still the same
        m.zero_grad(set_to_none=True)
        (m.wte(tokens) ** 2).sum().backward()
    assert module.wte.weight.grad.layout == torch.strided
    torch.testing.assert_close(module.wte.weight.grad, eager.wte.weight.grad)
    assert module.wte.weight is module.lm_head.weight
    assert list(module.state_dict()) == list(eager.state_dict())


def test_eager_rest_adds_the_lookups_rows_into_the_heads_gradient_in_place():
    module = emitted(2, d=24)
    eager = copy.deepcopy(module)
    tc.compile(module, backend="aot_eager")
    assert type(module.lm_head) is tc.FreshGradLinear and type(eager.lm_head) is nn.Linear
    gen = torch.Generator().manual_seed(2)
    tokens, targets = (torch.randint(0, VOCAB, (2, T), generator=gen) for _ in range(2))
    made = []  # the addresses of the weight gradients the head's backward computed
    for _ in range(2):
        module.zero_grad(set_to_none=True)
        logits = module(tokens)
        logits.grad_fn.register_hook(lambda grads_in, grads_out: made.append(grads_in[1].data_ptr()))
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        (grad,) = torch.autograd.grad(loss, [module.wte.weight], retain_graph=True)
        assert grad.data_ptr() == made[-1], "the rows were added into the head's matrix, not into a copy"
        loss.backward()
        assert module.wte.weight.grad.data_ptr() == made[-1]
    want = step(eager, tokens, targets)[1]["wte.weight"]
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(module.wte.weight.grad, want, rtol=1e-5, atol=1e-7)


def test_a_tied_head_without_its_lookups_alias_is_a_plain_linear():
    module = tc.compile(emitted(2, d=24), backend="aot_eager")
    hidden = torch.randn(2, T, 24, requires_grad=True)
    module.wte(torch.zeros(2, T, dtype=torch.long))
    want = F.linear(hidden, module.wte.weight)
    with torch.no_grad():  # a lookup without grad leaves no alias
        module.wte(torch.zeros(2, T, dtype=torch.long))
    assert module.lm_head(hidden).grad_fn.name() == want.grad_fn.name()
    module.wte(torch.zeros(2, T, dtype=torch.long))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module.lm_head(hidden).dtype == torch.bfloat16, "autocast still casts"
    untied = nn.Parameter(module.wte.weight.detach().clone())
    module.lm_head.weight = untied  # the alias is of a weight the head no longer holds
    out = module.lm_head(hidden)
    assert out.grad_fn.name() == want.grad_fn.name()
    out.sum().backward()
    assert untied.grad is not None and module.wte.weight.grad is None
    torch.testing.assert_close(out, want)


class TiedInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(VOCAB, D), nn.Linear(D, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens):
        return self.head(self.emb(tokens))


def test_only_an_eager_rest_changes_lookups():
    regions = tc.compile(emitted(2, d=24), rest="compiled", backend="aot_eager")
    frozen = gpt(2)
    frozen.wte.weight.requires_grad_(False)
    tc.compile(frozen, backend="aot_eager")
    blocks = nn.Sequential(TiedInside(), TiedInside())  # the tie is compiled with each block
    tc.compile(blocks, backend="aot_eager")
    lookups = [regions.wte, frozen.wte, blocks[0].emb, blocks[1].emb]
    assert [type(m) for m in lookups] == [nn.Embedding] * 4
    heads = [regions.lm_head, frozen.lm_head, blocks[0].head, blocks[1].head]
    assert [type(m) for m in heads] == [nn.Linear] * 4


def test_a_shared_repeat_is_one_region_called_in_a_loop():
    program = tiec.load(EXAMPLES / "albert.tie", {"layers": 3, "d": D, "heads": HEADS, "ffn": 32, "e": 8,
                                                   "vocab": VOCAB, "max_len": T})
    module = program.torch(model="Albert")
    assert [(cls.__name__, len(subs)) for cls, subs in tc.block_classes(module).items()] == [("EncoderLayer", 1)]
    eager = copy.deepcopy(module)
    rec = Recorder()
    tiec.compile(module, rest="compiled", backend=rec)  # the module is callable once imported
    tokens = torch.randint(0, VOCAB, (2, T))
    module(tokens).sum().backward()
    assert rec.region_calls() == (3, 1)
    torch.testing.assert_close(module(tokens), eager(tokens), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("rest", ["eager", "compiled"])
def test_compiled_modules_still_pickle_and_copy(rest):
    module = tc.compile(emitted(2, d=8), rest=rest, backend="aot_eager")
    for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        assert clone.lm_head.weight is clone.wte.weight
        assert list(clone.state_dict()) == list(module.state_dict())
        assert type(clone.wte) is nn.Embedding and type(clone.lm_head) is nn.Linear, "uncompiled, as before"
        assert not any(tied_rest.SLOT in vars(m) for m in clone.modules())
        torch.testing.assert_close(clone.wte.weight, module.wte.weight)


class Leaf(nn.Module):
    def forward(self, x):
        return x


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = Leaf(), Leaf()

    def forward(self, x):
        return self.b(self.a(x))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(Pair(), Pair())

    def forward(self, x):
        return self.layers(x)


class Marked(nn.Module):
    __tiec_block__ = True

    def forward(self, x):
        return x


class NoForward(nn.Module):
    pass


def test_block_classes_are_found_generically():
    root = nn.Module()
    root.encoder = Encoder()  # a wrapper of repeated blocks is compiled through
    root.norms = nn.ModuleList([nn.LayerNorm(4), nn.LayerNorm(4)])  # torch's own classes never count
    root.plain = nn.ModuleList([NoForward(), NoForward()])  # no forward of their own
    root.marked = Marked()
    root.head = Leaf()  # inside no block; one instance: maybe a shared repeat
    found = tc.block_classes(root)
    assert {cls: len(subs) for cls, subs in found.items()} == {Pair: 2, Marked: 1, Leaf: 1}
    assert found[Leaf] == [root.head], "the Leaf instances inside Pair are compiled as part of Pair"
    assert tc.summary(root).splitlines() == ["Pair: 2 instance(s)", "Marked: 1 instance(s)", "Leaf: 1 instance(s)"]
    assert {cls.__name__ for cls in tc.block_classes(root, blocks=["Encoder"])} == {"Encoder", "Marked", "Leaf"}
    assert tc.block_classes(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == {}


def test_regions_under_inductor_turn_buffer_reuse_off(monkeypatch):
    seen = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: seen.append(kwargs))
    tc.compile(gpt(2), rest="compiled")
    tc.compile(gpt(2), rest="compiled", options={"allow_buffer_reuse": True, "max_autotune": False})
    tc.compile(gpt(2), rest="compiled", backend="aot_eager")
    tc.compile(nn.Linear(2, 2))  # no blocks: plain torch.compile
    assert seen == [{"options": {"allow_buffer_reuse": False}},
                    {"options": {"allow_buffer_reuse": True, "max_autotune": False}},
                    {"backend": "aot_eager"}, {}]


def test_bad_rest_is_refused():
    with pytest.raises(ValueError, match="rest must be"):
        tc.compile(nn.Linear(2, 2), rest="lazy")


def _clear_probe_caches(cpu_vec_isa) -> None:
    cpu_vec_isa.valid_vec_isa_list.cache_clear()
    cpu_vec_isa.VecISA._VecISA__bool__impl.cache_clear()
    for isa in cpu_vec_isa.supported_vec_isa_list:  # the sets with a check of their own (AMX, VNNI)
        getattr(type(isa).__bool__, "cache_clear", lambda: None)()


@pytest.mark.parametrize("cores", [2, 64])
def test_cpu_probe_checks_the_sets_from_the_end_of_inductors_list(monkeypatch, cores):
    """One thread per core but one, at most one per set, taking the sets from the end of the
    list inductor walks from the front; inductor's list afterwards is built from the threads'
    answers without compiling anything again."""
    cpu_vec_isa = pytest.importorskip("torch._inductor.cpu_vec_isa")
    flags = cpu_vec_isa.x86_isa_checker()
    if not flags:
        pytest.skip("the background probe is for x86 CPUs")
    expected = [isa for isa in cpu_vec_isa.supported_vec_isa_list if all(f in flags for f in str(isa).split())]
    threads_wanted = min(len(expected), cores - 1)
    together = threading.Barrier(threads_wanted, timeout=30)  # breaks unless the threads run at once
    first_set: dict[str, str] = {}
    checked: list[str] = []

    def check_build(isa, code):
        thread = threading.current_thread().name
        if thread not in first_set:
            first_set[thread] = str(isa)
            together.wait()
        checked.append(str(isa))
        return str(isa) != str(expected[-1])  # the last set fails: inductor's list must leave it out

    monkeypatch.setattr(cpu_vec_isa.VecISA, "check_build", check_build)
    monkeypatch.setattr(tc, "_probe_threads", [])
    monkeypatch.setattr(tc, "_cores", lambda: cores)
    _clear_probe_caches(cpu_vec_isa)
    try:
        threads = tc.probe_cpu_in_background()
        assert len(threads) == threads_wanted
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        wanted_first = {str(isa) for isa in expected[::-1][:threads_wanted]}
        assert set(first_set.values()) == wanted_first, "each thread starts from the end of the list"
        if threads_wanted == 1:  # one thread: the whole list, back to front, each set once
            assert list(dict.fromkeys(checked)) == [str(isa) for isa in expected[::-1]]
        assert set(checked) == {str(isa) for isa in expected}
        assert tc.probe_cpu_in_background() == [], "once per process"
        builds = len(checked)
        assert cpu_vec_isa.valid_vec_isa_list() == expected[:-1]
        assert len(checked) == builds, "inductor reused the threads' answers"
    finally:  # the real answers, computed again when next asked
        _clear_probe_caches(cpu_vec_isa)


def test_cpu_probe_starts_only_for_inductor_on_cpu(monkeypatch):
    started = []
    monkeypatch.setattr(tc, "probe_cpu_in_background", lambda: started.append(True) or [])
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: None)
    tc.compile(gpt(2), rest="compiled", backend="aot_eager")
    tc.compile(gpt(2), backend="eager")
    assert started == []
    tc.compile(gpt(2), rest="compiled")
    tc.compile(gpt(2))
    assert started == [True, True]
