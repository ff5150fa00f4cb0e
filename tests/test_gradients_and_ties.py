"""Training semantics: gradients of shared tensors sum over their uses; tie penalties.

References are built by hand: the same network with every use holding its own copy (untied), whose
per-copy gradients, summed (transposed where the use is transposed), must equal the gradient of
the one shared tensor. Tie penalties are recomputed from the state dict.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

import tiec
from tests import references as R

EX = Path(__file__).resolve().parent.parent / "examples"


def _f64(model: str, spec: str):
    program = tiec.load(EX / f"{spec}.tie")
    return program.torch(model=model, seed=0).double().train()


def test_tied_autoencoder_gradient_is_sum_over_both_uses():
    m = _f64("TiedAutoencoder", "tied_autoencoder")
    x = torch.randn(4, 784, dtype=torch.float64)
    m(x).square().sum().backward()
    w = m.enc.weight.detach()
    w_enc, w_dec = w.clone().requires_grad_(), w.t().clone().requires_grad_()  # untied copies
    h = F.relu(F.linear(x, w_enc, m.enc.bias.detach()))
    torch.sigmoid(F.linear(h, w_dec, m.dec.bias.detach())).square().sum().backward()
    torch.testing.assert_close(m.enc.weight.grad, w_enc.grad + w_dec.grad.t())
    assert "dec.weight" not in m.state_dict()


def test_siamese_tower_gradient_is_sum_over_both_branches():
    m = _f64("Siamese", "siamese")
    left, right = torch.randn(3, 1, 28, 28, dtype=torch.float64), torch.randn(3, 1, 28, 28, dtype=torch.float64)
    m(left, right).sum().backward()
    a, b = R.Tower().double(), R.Tower().double()  # two untied towers with the same values
    a.load_state_dict(m.tower.state_dict())
    b.load_state_dict(m.tower.state_dict())
    F.cosine_similarity(a(left), b(right), dim=1).sum().backward()
    for name, p in m.tower.named_parameters():
        want = dict(a.named_parameters())[name].grad + dict(b.named_parameters())[name].grad
        torch.testing.assert_close(p.grad, want)


def test_repeat_share_gradient_is_sum_over_iterations():
    m = _f64("DeepShared", "deep_shared")
    x = torch.randn(5, 128, dtype=torch.float64)
    m(x).square().mean().backward()
    untied = R.Deep(shared=False).double()
    state = {f"blk.{i}.{k}": v for i in range(6) for k, v in m.blk.state_dict().items()}
    state.update({f"head.{k}": v for k, v in m.head.state_dict().items()})
    untied.load_state_dict(state, strict=True)
    untied(x).square().mean().backward()
    for name, p in m.blk.named_parameters():
        want = sum(dict(untied.blk[i].named_parameters())[name].grad for i in range(6))
        torch.testing.assert_close(p.grad, want)


def test_tied_lm_output_gradient_reaches_the_embedding():
    m = _f64("TiedLM", "tied_lm")
    tokens = torch.randint(0, 1000, (2, 7))
    m(tokens).square().mean().backward()
    w = m.embed.weight.detach()
    w_in, w_out = w.clone().requires_grad_(), w.clone().requires_grad_()
    h = F.layer_norm(F.embedding(tokens, w_in), (64,), m.norm.weight.detach(), m.norm.bias.detach())
    F.linear(h, w_out).square().mean().backward()
    torch.testing.assert_close(m.embed.weight.grad, w_in.grad + w_out.grad)
    assert m.lm_head.weight is m.embed.weight


def test_multitask_tie_penalty_and_shared_head():
    whole = tiec.load(EX / "multitask.tie").torch(seed=0).double()
    assert whole.TaskA.fc2.weight is whole.TaskB.fc2.weight
    assert whole.TaskA.fc1.weight is not whole.TaskB.fc1.weight
    sd = whole.state_dict()
    want = 0.01 * sum(((sd[f"TaskA.fc1.{s}"] - sd[f"TaskB.fc1.{s}"]) ** 2).sum() for s in ("weight", "bias"))
    torch.testing.assert_close(whole.tie_penalty(), want)
    whole.tie_penalty().backward()
    torch.testing.assert_close(whole.TaskA.fc1.weight.grad, 0.02 * (sd["TaskA.fc1.weight"] - sd["TaskB.fc1.weight"]))
    assert float(whole.TaskA.tie_penalty()) == 0.0  # a cross-model tie does not apply to one model alone


def test_classifier_autoencoder_tie_penalty():
    whole = tiec.load(EX / "classifier_and_autoencoder.tie").torch(seed=3).double()
    sd = whole.state_dict()
    want = 0.001 * sum(((sd[f"Classifier.enc.{s}"] - sd[f"Autoencoder.enc.{s}"]) ** 2).sum()
                       for s in ("weight", "bias"))
    torch.testing.assert_close(whole.tie_penalty(), want)


def test_many_member_and_l1_ties():
    program = tiec.loads("""
model M {
    in x: [B, 3]
    a = Linear(3, 3, bias=false)
    b = Linear(3, 3, bias=false)
    c = Linear(3, 3, bias=false)
    d = Linear(3, 3, bias=false) tie(0.5, norm=l1) a.weight.T
    return d(c(b(a(x))))
}
tie(0.25) M.a, M.b, M.c
""")
    m = program.torch(seed=1).double()  # one model: the module is M itself
    a, b, c, d = (getattr(m, n).weight for n in "abcd")
    pairs = [(a, b), (a, c), (b, c)]
    want = 0.25 * sum(((x - y) ** 2).sum() for x, y in pairs) + 0.5 * (d - a.t()).abs().sum()
    torch.testing.assert_close(m.tie_penalty(), want)
