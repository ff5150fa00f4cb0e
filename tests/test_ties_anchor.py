"""Ties to fixed tensors (anchors), ties to the centroid, and λ read and set on the live module.

Every penalty and gradient is checked against a hand computation in numpy (float64): the sum over
groups, no mean and no ½, so an anchored l2 tie has gradient 2λ(w − w₀).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiec.dsl.diagnostics import TieError

import tiec


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _grads(module: torch.nn.Module) -> dict[str, np.ndarray]:
    module.zero_grad(set_to_none=True)
    module.tie_penalty().backward()
    return {n: _np(p.grad) for n, p in module.named_parameters() if p.grad is not None}


ANCHORED = """
model M {
    in x: [B, 4]
    fc = Linear(4, 3) tie(0.5) anchor("pre.fc")
    out = Linear(3, 2)
    tie(0.25, norm=l1) out.weight, anchor()
    return out(fc(x))
}
"""


def _pretrained() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"pre.fc.weight": torch.randn(3, 4, generator=g), "pre.fc.bias": torch.randn(3, generator=g),
            "out.weight": torch.randn(2, 3, generator=g), "unrelated": torch.zeros(5)}


def test_anchor_penalty_and_gradient_match_hand_computation():
    program = tiec.loads(ANCHORED)
    state = _pretrained()
    m = program.torch(anchors=state)
    w, b, v = _np(m.fc.weight), _np(m.fc.bias), _np(m.out.weight)
    w0, b0, v0 = (_np(state[k]) for k in ("pre.fc.weight", "pre.fc.bias", "out.weight"))
    want = 0.5 * (((w - w0) ** 2).sum() + ((b - b0) ** 2).sum()) + 0.25 * np.abs(v - v0).sum()
    assert m.tie_penalty().item() == pytest.approx(want, rel=1e-5)
    grads = _grads(m)
    np.testing.assert_allclose(grads["fc.weight"], 2 * 0.5 * (w - w0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["fc.bias"], 2 * 0.5 * (b - b0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["out.weight"], 0.25 * np.sign(v - v0), rtol=1e-6)
    assert "out.bias" not in grads  # not tied


def test_anchors_are_untrained_buffers_outside_the_state_dict():
    m = tiec.loads(ANCHORED).torch(anchors=_pretrained())
    params = {id(p) for p in m.parameters()}
    buffers = dict(m.named_buffers())
    anchors = [t for n, t in buffers.items() if n.startswith("anchor")]
    assert len(anchors) == 3 and not any(id(t) in params or t.requires_grad for t in anchors)
    assert set(m.state_dict()) == {"fc.weight", "fc.bias", "out.weight", "out.bias"}  # non-persistent
    assert len(list(m.parameters())) == 4
    torch.testing.assert_close(anchors[0], _pretrained()["pre.fc.weight"])
    # an optimizer step moves the weights, never the anchors
    before = [a.clone() for a in anchors]
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.tie_penalty().backward()
    opt.step()
    for a, b in zip(anchors, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_anchor_from_a_safetensors_file_and_a_torch_file(tmp_path):
    state = {k: v for k, v in _pretrained().items()}
    st, pt = tmp_path / "pre.safetensors", tmp_path / "pre.pt"
    save_file(state, str(st))
    torch.save(state, pt)
    a = tiec.loads(ANCHORED).torch(anchors=st)
    b = tiec.loads(ANCHORED).torch(anchors=str(pt))
    assert a.tie_penalty().item() == pytest.approx(b.tie_penalty().item(), rel=1e-6)
    assert a.tie_penalty().item() > 0


def test_penalty_refuses_to_run_before_anchors_are_loaded():
    m = tiec.loads(ANCHORED).torch()
    with pytest.raises(RuntimeError, match="anchors are not loaded"):
        m.tie_penalty()
    m.load_anchors(_pretrained())
    assert m.tie_penalty().item() > 0


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("pre.fc.bias"), "no entry 'pre.fc.bias'"),
    (lambda s: s.update({"pre.fc.weight": torch.zeros(4, 3)}), "has shape [4, 3], but 'fc.weight' has [3, 4]"),
    (lambda s: s.update({"out.weight": torch.zeros(2, 3, dtype=torch.float16)}), "has dtype float16"),
    (lambda s: s.update({"out.weight": [1.0, 2.0]}), "is not a tensor"),
])
def test_bad_anchor_checkpoints_are_located_errors(change, message):
    state = _pretrained()
    change(state)
    program = tiec.loads(ANCHORED, filename="m.tie")
    with pytest.raises(TieError) as err:
        program.torch(anchors=state)
    text = err.value.render()
    assert message in text
    assert text.startswith(("m.tie:4:", "m.tie:6:"))  # at the anchor(…) that asked
    assert "^" in text


def test_unreadable_anchor_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(TieError, match="cannot read weights from"):
        tiec.loads(ANCHORED).torch(anchors=bad)


CENTROID = """
model C {
    in x: [B, 3]
    a = Linear(3, 3, bias=false)
    b = Linear(3, 3, bias=false)
    c = Linear(3, 3, bias=false)
    tie(0.3, centroid) a, b, c.weight.T
    return c(b(a(x)))
}
"""


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_centroid_penalty_and_gradient(norm):
    spec = CENTROID if norm == "l2" else CENTROID.replace("tie(0.3, centroid)", "tie(0.3, centroid, norm=l1)")
    m = tiec.loads(spec).torch(seed=3)
    ws = [_np(m.a.weight), _np(m.b.weight), _np(m.c.weight).T]
    mean = sum(ws) / 3
    if norm == "l2":
        want = 0.3 * sum(((w - mean) ** 2).sum() for w in ws)
        grad = [2 * 0.3 * (w - mean) for w in ws]  # Σ_i (w_i − w̄) = 0, so the mean's own term cancels
    else:
        want = 0.3 * sum(np.abs(w - mean).sum() for w in ws)
        s = [np.sign(w - mean) for w in ws]
        grad = [0.3 * (si - sum(s) / 3) for si in s]
    assert m.tie_penalty().item() == pytest.approx(want, rel=1e-5)
    grads = _grads(m)
    np.testing.assert_allclose(grads["a.weight"], grad[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["b.weight"], grad[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["c.weight"], grad[2].T, rtol=1e-4, atol=1e-6)


def test_centroid_is_not_pairwise():
    """For k members Σ_{i<j} ‖w_i − w_j‖² = k · Σ_i ‖w_i − w̄‖²: the two kinds differ by k."""
    centroid = tiec.loads(CENTROID).torch(seed=1)
    pairwise = tiec.loads(CENTROID.replace(", centroid", "")).torch(seed=1)
    assert pairwise.tie_penalty().item() == pytest.approx(3 * centroid.tie_penalty().item(), rel=1e-5)


def test_centroid_with_an_anchor_counts_it_in_the_mean():
    spec = """
    model A {
        in x: [B, 2]
        p = Linear(2, 2, bias=false)
        q = Linear(2, 2, bias=false)
        tie(1.5, centroid) p.weight, q.weight, anchor("w0")
        return q(p(x))
    }
    """
    w0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    m = tiec.loads(spec).torch(anchors={"w0": w0})
    ws = [_np(m.p.weight), _np(m.q.weight), _np(w0)]
    mean = sum(ws) / 3
    assert m.tie_penalty().item() == pytest.approx(1.5 * sum(((w - mean) ** 2).sum() for w in ws), rel=1e-5)


MULTI = """
model M {
    in x: [B, 4]
    a = Linear(4, 4)
    b = Linear(4, 4)
    c = Linear(4, 4)
    tie(0.1) a.weight, b.weight
    tie(0.2, centroid) a.bias, b.bias, c.bias
    return c(b(a(x)))
}
"""


def _hand(m, lam1: float, lam2: float) -> float:
    a, b = _np(m.a.weight), _np(m.b.weight)
    biases = [_np(m.a.bias), _np(m.b.bias), _np(m.c.bias)]
    mean = sum(biases) / 3
    return lam1 * ((a - b) ** 2).sum() + lam2 * sum(((x - mean) ** 2).sum() for x in biases)


def test_tie_strengths_read_and_set_on_the_live_module():
    m = tiec.loads(MULTI).torch(seed=2)
    assert m.tie_strengths() == pytest.approx({1: 0.1, 2: 0.2})
    assert m.tie_penalty().item() == pytest.approx(_hand(m, 0.1, 0.2), rel=1e-5)
    m.set_tie_strength(3.0, group=2)
    assert m.tie_strengths() == pytest.approx({1: 0.1, 2: 3.0})
    assert m.tie_penalty().item() == pytest.approx(_hand(m, 0.1, 3.0), rel=1e-5)
    m.set_tie_strength(0.0)
    assert m.tie_penalty().item() == 0.0
    with pytest.raises(KeyError, match="no tie group 9"):
        m.set_tie_strength(1.0, group=9)
    assert "tie_strength" not in m.state_dict()  # the spec's λ stays the default of a fresh module
    assert copy.deepcopy(m).tie_strengths() == pytest.approx({1: 0.0, 2: 0.0})


def test_warm_up_schedule_inside_a_training_loop():
    m = tiec.loads(MULTI).torch(seed=4)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    for step in range(5):
        lam1, lam2 = 0.1 * step / 4, 0.2 * step / 4
        m.set_tie_strength(lam1, group=1)
        m.set_tie_strength(lam2, group=2)
        want = _hand(m, lam1, lam2)
        penalty = m.tie_penalty()
        assert penalty.item() == pytest.approx(want, rel=1e-5, abs=1e-9)
        opt.zero_grad()
        (m(x).pow(2).mean() + penalty).backward()
        opt.step()


def test_tie_strength_changes_under_torch_compile_without_recompiling():
    torch._dynamo.reset()
    m = tiec.loads(MULTI).torch(seed=5)
    frames = []

    def backend(gm, inputs):
        frames.append(gm)
        return gm.forward

    penalty = torch.compile(m.tie_penalty, backend=backend)
    first = penalty().item()
    assert first == pytest.approx(_hand(m, 0.1, 0.2), rel=1e-5)
    m.set_tie_strength(0.7, group=1)
    assert penalty().item() == pytest.approx(_hand(m, 0.7, 0.2), rel=1e-5)
    assert len(frames) == 1  # λ is a buffer read by the graph, not a constant baked into it
    torch._dynamo.reset()


def test_loops_over_copies_keep_one_strength_per_copy():
    spec = """
    model R {
        in x: [B, 3]
        base = Linear(3, 3)
        repeat 3 {
            blk = Linear(3, 3)
            tie(0.5) blk.weight, base.weight
            x = blk(x)
        }
        return base(x)
    }
    """
    program = tiec.loads(spec)
    assert "enumerate(self.blk)" in program.python()  # one loop, not three groups written out
    m = program.torch(seed=0)
    ids = list(m.tie_strengths())
    m.set_tie_strength(2.0, group=ids[1])
    base = _np(m.base.weight)
    lams = [0.5, 2.0, 0.5]
    want = sum(lam * ((_np(m.blk[i].weight) - base) ** 2).sum() for i, lam in enumerate(lams))
    assert m.tie_penalty().item() == pytest.approx(want, rel=1e-5)


def test_all_models_module_reaches_each_models_anchors_and_strengths():
    spec = """
    model A {
        in x: [B, 2]
        fc = Linear(2, 2) tie(0.5) anchor("pre")
        return fc(x)
    }
    model B {
        in x: [B, 2]
        fc = Linear(2, 2)
        return fc(x)
    }
    tie(0.25) A.fc, B.fc
    """
    program = tiec.loads(spec)
    pre = {"pre.weight": torch.ones(2, 2), "pre.bias": torch.zeros(2)}
    m = program.torch(anchors=pre)
    aw, ab, bw, bb = (_np(t) for t in (m.A.fc.weight, m.A.fc.bias, m.B.fc.weight, m.B.fc.bias))
    want = 0.5 * (((aw - 1) ** 2).sum() + (ab ** 2).sum()) + 0.25 * (((aw - bw) ** 2).sum() + ((ab - bb) ** 2).sum())
    assert m.tie_penalty().item() == pytest.approx(want, rel=1e-5)
    m.set_tie_strength(0.0)
    assert m.tie_penalty().item() == 0.0 and m.A.tie_penalty().item() == 0.0  # the model's own λ too


@pytest.mark.parametrize("spec, message", [
    ('model M {\n in x: [B, 2]\n fc = Linear(2, 2)\n tie(1) anchor("w"), fc\n return fc(x)\n}\n',
     "4:9: error: a tie starts with a parameter or layer"),
    ('model M {\n in x: [B, 2]\n fc = Linear(2, 2)\n tie(1) fc, anchor("")\n return fc(x)\n}\n',
     "4:13: error: an anchor's key must be 1 to 1024 printable characters"),
    ('model M {\n in x: [B, 2]\n fc = Linear(2, 2)\n tie(1, median) fc, anchor()\n return fc(x)\n}\n',
     "error: tie takes one strength"),
    (('model A {\n in x: [B, 2]\n fc = Linear(2, 2)\n return fc(x)\n}\nmodel B {\n in x: [B, 2]\n fc = Linear(2, 2)\n'
     ' return fc(x)\n}\ntie(1) A.fc, B.fc, anchor("w")\n'), "a tie with an anchor ties parameters of one model"),
])
def test_bad_anchor_specs_are_located_errors(spec, message):
    with pytest.raises(TieError) as err:
        tiec.loads(spec, filename="m.tie")
    assert message in err.value.render()


def test_anchor_keys_reach_generated_code_only_as_escaped_literals():
    key = "a\\b'c {x} é"
    spec = 'model M {\n in x: [B, 2]\n fc = Linear(2, 2, bias=false) tie(1) anchor("' + key + '")\n return fc(x)\n}\n'
    program = tiec.loads(spec)
    source = program.python()
    compile(source, "<emitted>", "exec")
    m = program.torch(anchors={key + ".weight": torch.full((2, 2), 2.0)})  # a layer: its slots under key.slot
    assert m.tie_penalty().item() == pytest.approx(((_np(m.fc.weight) - 2.0) ** 2).sum(), rel=1e-5)


def test_stats_list_tie_kinds_and_anchors():
    stats = tiec.loads(ANCHORED).stats()
    ties = stats["tie_groups"]
    assert [t["anchors"] for t in ties] == [["pre.fc.weight"], ["pre.fc.bias"], ["out.weight"]]
    assert {t["kind"] for t in tiec.loads(CENTROID).stats()["tie_groups"]} == {"centroid"}


def test_tie_kinds_benchmark_checks_each_penalty_at_tiny_size():
    """The benchmark's figures exist and its values are right (no timing is asserted)."""
    import importlib
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parent.parent / "benchmarks")
    saved = {name: sys.modules.pop(name) for name in ("common", "tie_kinds") if name in sys.modules}
    sys.path.insert(0, bench)
    try:
        tie_kinds = importlib.import_module("tie_kinds")
        figures, extra = tie_kinds.run(copies=4, n=8, rounds=1)
    finally:
        sys.path.remove(bench)
        for name in ("common", "tie_kinds"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    assert [f.name.split(",")[1].split("(")[0].strip() for f in figures] == ["pairwise", "centroid", "anchor"]
    assert all(f.value > 0 and f.error is None for f in figures)
    for kind, v in extra["values"].items():
        assert v["compiled"] == pytest.approx(v["float64"], rel=1e-4), kind


def test_own_key_anchors_follow_each_copy_and_each_block_instance():
    spec = """
    block B(d) {
        in x: [N, d]
        fc = Linear(d, d) tie(0.5) anchor()
        return fc(x)
    }
    model M {
        in x: [N, 3]
        repeat 2 {
            blk = Linear(3, 3, bias=false) tie(1) anchor()
            x = blk(x)
        }
        t = B(3)
        return t(x)
    }
    """
    program = tiec.loads(spec)
    assert [a.key for t in program.ir.tie_groups for a in t.anchors] == \
        ["blk.0.weight", "blk.1.weight", "t.fc.weight", "t.fc.bias"]
    m = program.torch(seed=0)
    pretrained = {k: torch.full_like(v, 0.5) for k, v in m.state_dict().items()}  # a checkpoint of this model
    m.load_anchors(pretrained)
    lam = {"blk.0.weight": 1.0, "blk.1.weight": 1.0, "t.fc.weight": 0.5, "t.fc.bias": 0.5}
    want = sum(lam[k] * ((_np(v) - 0.5) ** 2).sum() for k, v in m.state_dict().items())
    assert m.tie_penalty().item() == pytest.approx(want, rel=1e-5)


def test_an_anchor_has_its_parameters_dtype_and_is_never_cast():
    spec = """model M {
    in x: f16[B, 4]
    fc = Linear(4, 4, dtype="f16", bias=false) tie(0.5) anchor("w")
    return fc(x)
}
"""
    program = tiec.loads(spec, filename="m.tie")
    w0 = torch.full((4, 4), 0.25, dtype=torch.float16)
    m = program.torch(anchors={"w.weight": w0})
    anchor = dict(m.named_buffers())["anchor_0"]
    assert anchor.dtype == torch.float16
    torch.testing.assert_close(anchor, w0, rtol=0, atol=0)
    want = 0.5 * ((_np(m.fc.weight) - 0.25) ** 2).sum()
    assert m.tie_penalty().item() == pytest.approx(want, rel=1e-2)  # f16 weights: a looser tolerance
    with pytest.raises(TieError, match="has dtype float32, but 'fc.weight' is f16"):
        program.torch(anchors={"w.weight": w0.float()})
