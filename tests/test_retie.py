"""Share groups through PyTorch's untying: `load_state_dict(assign=True)`, `to_empty()`, the meta device.

Each check compares the compiled module against an independent reference: the hand-written modules
of `tests/references.py` (true sharing, written by hand), the unrolled BERT-like reference for a
shared repeat, and `tiec stats` for the groups and unique parameter counts.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import tiec
from tests import references as ref

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL_ALBERT = {"vocab": 50, "e": 8, "d": 16, "heads": 2, "ffn": 32, "layers": 3, "max_len": 16}

# Every way a share is written: a block's own group (in a block repeated in a repeated block), a group
# per copy of a non-shared repeat (plain and transposed), a group reaching outside a repeat, and a
# scheduled repeat (its copies aliased module by module).
MIXED = """
block Pair(d) {
    in x: [B, d]
    a = Linear(d, d)
    b = Linear(d, d) share weight = a.weight
    return b(a(x))
}

block Outer(d) {
    in x: [B, d]
    repeat 2 {
        p = Pair(d)
        x = p(x)
    }
    return x
}

model Mixed(d = 4) {
    in x: [B, d]
    repeat 2 {
        o = Outer(d)
        x = o(x)
    }
    repeat 3 {
        u = Linear(d, d)
        v = Linear(d, d, bias=false) share weight = u.weight.T
        w = Linear(d, d) share weight = u.weight
        x = w(v(u(x)))
    }
    repeat 4 share cycle(2) {
        c = Linear(d, d)
        x = c(x)
    }
    base = Linear(d, d)
    repeat 2 {
        s = Linear(d, d) share weight = base.weight
        x = s(x)
    }
    return base(x)
}
"""


def _program(name: str):
    if name == "mixed":
        return tiec.loads(MIXED, filename="mixed.tie")
    return tiec.load(EXAMPLES / f"{name}.tie", SMALL_ALBERT if name == "albert" else None)


def _tensors(module: nn.Module) -> int:
    return len({id(p) for p in module.parameters()})


def _member(module: nn.Module, local: str) -> torch.Tensor:
    """The tensor a member (`path.slot`, relative to `module`) reads."""
    path, _, slot = local.rpartition(".")
    layer = module.get_submodule(path)
    if getattr(layer, "owner", None) is not None:  # a Transposed… layer: it reads its owner's tensor
        owner, name = layer.owner
        return getattr(owner, name)
    return getattr(layer, slot)


def _assert_one_tensor_per_group(program, module: nn.Module, model: str | None = None) -> None:
    """Every share group `tiec stats` lists is one tensor in `module` (all models, or `model`'s
    class), and the parameters hold exactly the unique count stats gives."""
    stats = program.stats()
    if model is None and len(program.models) == 1:
        model = program.models[0]

    def local(key: str) -> str:
        return key.partition(".")[2] if model is not None else key

    groups = [g for g in stats["share_groups"] if model is None or all(k.startswith(model + ".") for k in g["members"])]
    for group in groups:
        canon = _member(module, local(group["canonical"]))
        for key in group["members"]:
            t = _member(module, local(key))
            assert t is canon and t.data_ptr() == canon.data_ptr(), (group["canonical"], key)
    unique = stats["models"][model]["unique_params"] if model is not None else stats["program"]["unique_params"]
    assert sum(p.numel() for p in module.parameters()) == unique


def _distinct(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict whose every key holds its own values (shared keys differ)."""
    g = torch.Generator().manual_seed(7)
    return {k: (torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v.clone())
            for k, v in sd.items()}


# ---------------------------------------------------------------- the pitfall, and retie


@pytest.mark.parametrize("name, tied, untied", [
    ("tied_lm", 6, 7),  # TiedLM's lm_head.weight is its own tensor after assign
    ("multitask", 6, 8),  # TaskB.fc2's weight and bias come apart from TaskA's
    ("tied_autoencoder", 3, 3),  # a transposed share holds no tensor: nothing to come apart
    ("albert", 22, 22),  # `repeat … share` is one module called N times: nothing to come apart
    ("mixed", 29, 38),
])
def test_assign_unties_and_retie_restores(name, tied, untied):
    program = _program(name)
    module = program.torch(seed=1)
    assert _tensors(module) == tied
    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, assign=True)
    assert _tensors(module) == untied
    assert module.retie() is module
    assert _tensors(module) == tied
    _assert_one_tensor_per_group(program, module)


@pytest.mark.parametrize("name", ["tied_lm", "multitask", "mixed"])
def test_to_empty_unties_and_retie_restores(name):
    program = _program(name)
    module = program.torch(device="meta")
    assert all(p.is_meta for p in module.parameters())
    module.to_empty(device="cpu")
    assert _tensors(module) > _tensors(program.torch())
    module.retie()
    _assert_one_tensor_per_group(program, module)


def test_after_assign_the_canonical_members_key_wins():
    program = _program("tied_lm")
    module = program.torch()
    sd = _distinct(module.state_dict())
    assert not torch.equal(sd["TiedLM.embed.weight"], sd["TiedLM.lm_head.weight"])
    module.load_state_dict(sd, assign=True)
    module.retie()
    assert module.TiedLM.lm_head.weight is module.TiedLM.embed.weight
    assert torch.equal(module.TiedLM.embed.weight, sd["TiedLM.embed.weight"])


def test_a_scheduled_repeats_copies_stay_one_module_holding_the_last_copys_key():
    program = _program("mixed")
    module = program.torch()
    sd = _distinct(module.state_dict())
    module.load_state_dict(sd, assign=True)
    module.retie()
    assert module.c[2] is module.c[0]
    assert torch.equal(module.c[0].weight, sd["c.2.weight"])  # PyTorch loads the module once per copy


# ---------------------------------------------------------------- gradients and one optimizer step


def _tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(seed))


def _tied_lm_pair():
    program = _program("tied_lm")
    module = program.torch("TiedLM", seed=2)
    reference = ref.TiedLM()
    reference.load_state_dict(module.state_dict(), strict=True)
    return module, reference


def _loss(out: torch.Tensor) -> torch.Tensor:
    return (out.float() * torch.linspace(-1, 1, out.shape[-1])).square().sum()


def test_tied_lm_gradient_is_the_sum_over_uses_only_after_retie():
    module, reference = _tied_lm_pair()
    tokens = _tokens(1000)
    _loss(reference(tokens)).backward()
    want = reference.embed.weight.grad

    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, assign=True)
    _loss(module(tokens)).backward()
    lookup, head = module.embed.weight.grad, module.lm_head.weight.grad
    assert not torch.allclose(lookup, want, atol=1e-4)  # untied: each tensor sees one use
    torch.testing.assert_close(lookup + head, want)

    module.zero_grad(set_to_none=True)
    module.retie()
    _loss(module(tokens)).backward()
    torch.testing.assert_close(module.embed.weight.grad, want)


def test_tied_lm_one_adam_step_updates_the_shared_tensor_once():
    module, reference = _tied_lm_pair()
    tokens = _tokens(1000, seed=3)

    def step(m: nn.Module) -> None:
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        opt.zero_grad()
        _loss(m(tokens)).backward()
        opt.step()

    step(reference)
    untied, _ = _tied_lm_pair()
    untied.load_state_dict({k: v.clone() for k, v in untied.state_dict().items()}, assign=True)
    step(untied)
    assert not torch.allclose(untied.embed.weight, untied.lm_head.weight)  # two updates, two tensors now

    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, assign=True)
    module.retie()
    assert len(list(module.parameters())) == len(list(reference.parameters()))
    step(module)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(module.state_dict()[key], value, msg=key)


class _MultiTask(nn.Module):
    """Two MLPs whose fc2 is one module (hand-written true sharing)."""

    def __init__(self):
        super().__init__()
        self.TaskA, self.TaskB = ref.MLP(), ref.MLP()
        self.TaskB.fc2 = self.TaskA.fc2


def test_multitask_cross_model_gradient_and_adam_step():
    program = _program("multitask")
    module = program.torch(seed=4)
    reference = _MultiTask()
    reference.load_state_dict(module.state_dict(), strict=True)
    x = torch.randn(3, 784, generator=torch.Generator().manual_seed(5))

    def loss(m):
        return _loss(m.TaskA(x)) + 2 * _loss(m.TaskB(x))

    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, assign=True)
    assert module.TaskB.fc2.weight is not module.TaskA.fc2.weight
    module.retie()
    for m in (module, reference):
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        opt.zero_grad()
        loss(m).backward()
        if m is module:
            grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        else:
            want = {n: p.grad.clone() for n, p in m.named_parameters()}
        opt.step()
    assert grads.keys() == want.keys()
    for n, value in want.items():
        torch.testing.assert_close(grads[n], value, msg=n)
    assert module.TaskB.fc2.weight is module.TaskA.fc2.weight
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(module.state_dict()[key], value, msg=key)


def test_tied_autoencoder_transposed_share_gradient_and_adam_step():
    program = _program("tied_autoencoder")
    module = program.torch(seed=6)
    reference = ref.TiedAutoencoder()
    reference.load_state_dict(module.state_dict(), strict=True)
    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, assign=True)
    module.retie()
    assert module.dec.owner == (module.enc, "weight")
    x = torch.rand(4, 784, generator=torch.Generator().manual_seed(8))
    for m in (module, reference):
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        _loss(m(x)).backward()
        opt.step()
    torch.testing.assert_close(module.enc.weight.grad, reference.enc.weight.grad)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(module.state_dict()[key], value, msg=key)


def test_albert_shared_layer_gradient_is_the_sum_over_its_uses():
    program = _program("albert")
    module = program.torch(seed=9)
    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, assign=True)
    module.retie()
    unrolled = ref.Albert(**SMALL_ALBERT, shared=False)  # one independent copy of the layer per use
    sd = module.state_dict()
    copies = {f"layer.{i}.{k[len('layer.'):]}": v for k, v in sd.items() if k.startswith("layer.")
              for i in range(SMALL_ALBERT["layers"])}
    unrolled.load_state_dict({**{k: v for k, v in sd.items() if not k.startswith("layer.")}, **copies}, strict=True)
    tokens = _tokens(SMALL_ALBERT["vocab"], seed=10)
    _loss(module(tokens)).backward()
    _loss(unrolled(tokens)).backward()
    for name, p in module.layer.named_parameters():
        want = sum(unrolled.layer[i].get_parameter(name).grad for i in range(SMALL_ALBERT["layers"]))
        torch.testing.assert_close(p.grad, want, msg=name)


# ---------------------------------------------------------------- the meta device


@pytest.mark.parametrize("name, model", [("tied_lm", None), ("tied_lm", "TiedLM"), ("multitask", None),
                                         ("tied_autoencoder", None), ("albert", None), ("mixed", None)])
def test_meta_build_materializes_to_the_seeded_cpu_build(name, model):
    program = _program(name)
    module = program.torch(model, seed=11, device="meta")
    assert all(t.is_meta for t in [*module.parameters(), *module.buffers()])
    assert tiec.materialize(module, seed=11) is module
    cpu = program.torch(model, seed=11)
    got, want = module.state_dict(), cpu.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].device.type == "cpu" and got[key].dtype == want[key].dtype
        assert torch.equal(got[key], want[key]), key
    _assert_one_tensor_per_group(program, module, model)
    if model == "TiedLM":  # the materialized module computes what a hand-written one with its weights does
        torch.testing.assert_close(module(_tokens(1000)), ref_forward(cpu, _tokens(1000)))


def test_materialize_after_to_empty_reties_and_keeps_requires_grad():
    program = _program("tied_lm")
    module = program.torch(seed=12, device="meta")
    module.TiedLM.norm.weight.requires_grad_(False)
    module.to_empty(device="cpu")
    tiec.materialize(module, seed=12)
    _assert_one_tensor_per_group(program, module)
    assert not module.TiedLM.norm.weight.requires_grad
    assert module.TiedLM.embed.weight.requires_grad


def test_meta_checkpoint_load_with_assign_then_retie():
    program = _program("tied_lm")
    trained = program.torch("TiedLM", seed=13)
    module = program.torch("TiedLM", device="meta")
    module.load_state_dict(trained.state_dict(), assign=True)
    module.retie()
    _assert_one_tensor_per_group(program, module, "TiedLM")
    tokens = _tokens(1000)
    torch.testing.assert_close(module(tokens), ref_forward(trained, tokens))


def ref_forward(module, tokens):
    reference = ref.TiedLM()
    reference.load_state_dict(module.state_dict(), strict=True)
    return reference(tokens)


def test_anchors_are_refused_on_the_meta_device():
    program = _program("tied_lm")
    with pytest.raises(ValueError, match="meta device"):
        program.torch(device="meta", anchors={})


def test_materialize_refuses_a_changed_module():
    program = _program("tied_lm")
    module = program.torch("TiedLM", device="meta")
    module.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="differ from a fresh build"):
        tiec.materialize(module)


def test_a_layer_named_retie_is_a_located_error():
    with pytest.raises(tiec.TieError) as err:
        tiec.loads("model M {\n    in x: [B, 4]\n    retie = Linear(4, 4)\n    return retie(x)\n}\n")
    assert err.value.span.line == 3 and "retie" in str(err.value)



def test_saved_weights_load_with_assign_into_a_meta_module(tmp_path):
    program = _program("tied_lm")
    trained = program.torch("TiedLM", seed=14)
    program.save(trained, tmp_path / "w.safetensors", model="TiedLM")
    module = program.torch("TiedLM", device="meta")
    state = program.load_weights(tmp_path / "w.safetensors", model="TiedLM")
    module.load_state_dict(state, assign=True)
    assert len(list(module.parameters())) == 4  # one Parameter per key, however the values were shared
    module.retie()
    _assert_one_tensor_per_group(program, module, "TiedLM")
    for key, value in trained.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key
