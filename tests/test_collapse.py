"""`tiec collapse`: close tie groups become one tensor (their mean); far ones are never touched.

References: distances and means computed in numpy from the trained tensors; the collapsed ONNX
file run with onnxruntime against a numpy forward that uses the mean weights.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.numpy import load_file

import tiec
from tiec.cli import main
from tiec.collapse import collapse, write

SPEC = """
model M {
    in x: [B, 4]
    a = Linear(4, 4)
    b = Linear(4, 4)
    c = Linear(4, 4)
    d = Linear(4, 4)
    tie(0.1) a, b
    tie(0.1) c.weight, d.weight.T
    return d(c(b(a(x))))
}
"""


def _trained(program, noise_b: float = 1e-4, noise_d: float = 0.5) -> dict[str, torch.Tensor]:
    m = program.torch(seed=1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        m.b.weight.copy_(m.a.weight + noise_b * torch.randn(4, 4, generator=g))
        m.b.bias.copy_(m.a.bias + noise_b * torch.randn(4, generator=g))
        m.d.weight.copy_(m.c.weight.T + noise_d * torch.randn(4, 4, generator=g))
    return {k: v.clone() for k, v in m.state_dict().items()}


def _distance(*ws: np.ndarray) -> float:
    mean = sum(ws) / len(ws)
    return max(np.linalg.norm(w - mean) for w in ws) / np.linalg.norm(mean)


def _forward(x, w):
    for layer in "abcd":
        x = x @ w[f"{layer}.weight"].T + w[f"{layer}.bias"]
    return x


def test_close_groups_become_their_mean_and_far_ones_stay_ties(tmp_path):
    program = tiec.loads(SPEC)
    state = _trained(program)
    sd = {k: v.double().numpy() for k, v in state.items()}
    result = collapse(program, state, eps=0.01)
    by_id = {g.id: g for g in result.groups}
    assert by_id[1].distance == pytest.approx(_distance(sd["a.weight"], sd["b.weight"]), rel=1e-6)
    assert by_id[3].distance == pytest.approx(_distance(sd["c.weight"], sd["d.weight"].T), rel=1e-6)
    assert [g.collapsed for g in result.groups] == [True, True, False]
    m = result.module
    assert m.b.weight is m.a.weight and m.b.bias is m.a.bias and m.d.weight is not m.c.weight
    mean = {"a.weight": (sd["a.weight"] + sd["b.weight"]) / 2, "a.bias": (sd["a.bias"] + sd["b.bias"]) / 2}
    np.testing.assert_allclose(m.a.weight.detach().numpy(), mean["a.weight"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m.d.weight.detach().numpy(), sd["d.weight"], rtol=0, atol=0)  # untouched
    assert result.before["unique_params"] == 80 and result.after["unique_params"] == 60
    assert result.before["unique_bytes"] - result.after["unique_bytes"] == 20 * 4
    assert [t.id for t in result.program.ir.tie_groups] == [1]  # the far group is still a tie
    assert result.module.tie_penalty().item() > 0

    info = write(result, str(tmp_path / "m.onnx"), str(tmp_path / "m.safetensors"))
    model = onnx.load(tmp_path / "m.onnx")
    assert sorted(i.name for i in model.graph.initializer) == sorted(
        ["a.weight", "a.bias", "c.weight", "c.bias", "d.weight", "d.bias"])  # one initializer per group
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    want = _forward(x.astype(np.float64), {**sd, "b.weight": mean["a.weight"], "b.bias": mean["a.bias"],
                                           **mean})
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    saved = load_file(str(tmp_path / "m.safetensors"))
    assert "b.weight" not in saved and info["weights"]["tensors"] == 6
    np.testing.assert_allclose(saved["a.weight"], mean["a.weight"], rtol=1e-6, atol=1e-7)


def test_output_change_is_measured_against_the_original():
    program = tiec.loads(SPEC)
    state = _trained(program, noise_b=1e-2)
    result = collapse(program, state, eps=0.1, samples=3, seed=5)
    from tiec.collapse import sample_inputs

    worst = 0.0
    sd = {k: v.double().numpy() for k, v in state.items()}
    mean = {k: (sd[f"a.{k}"] + sd[f"b.{k}"]) / 2 for k in ("weight", "bias")}
    collapsed = {**sd, "a.weight": mean["weight"], "b.weight": mean["weight"], "a.bias": mean["bias"],
                 "b.bias": mean["bias"]}
    for (x,) in sample_inputs(program.ir, "M", 3, 5):
        x = x.double().numpy()
        worst = max(worst, float(np.abs(_forward(x, sd) - _forward(x, collapsed)).max()))
    assert worst > 0
    assert result.output_change == pytest.approx(worst, rel=1e-3)


def test_never_collapses_a_group_above_eps():
    program = tiec.loads(SPEC)
    state = _trained(program, noise_b=1e-3)
    d = collapse(program, state, eps=1.0).groups[0].distance
    below = collapse(program, state, eps=d * 0.999)
    assert not below.groups[0].collapsed and "kept as a tie" in below.groups[0].reason
    assert below.module.b.weight is not below.module.a.weight
    at = collapse(program, state, eps=d * 1.001)
    assert at.groups[0].collapsed
    for eps in (0.0, 1e-3, 0.5, 2.0):
        for g in collapse(program, state, eps=eps).groups:
            assert not g.collapsed or g.distance <= eps


def test_a_transposed_member_collapses_into_a_transposed_share(tmp_path):
    program = tiec.loads(SPEC)
    state = _trained(program)
    result = collapse(program, state, eps=10.0)
    assert all(g.collapsed for g in result.groups)
    m = result.module
    want = (state["c.weight"].double() + state["d.weight"].double().T) / 2
    np.testing.assert_allclose(m.c.weight.detach().numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m.d.weight, m.c.weight.T)
    assert len(list(m.parameters())) == 5  # a.w, a.b, c.w (also d.w.T), c.b, d.b
    write(result, str(tmp_path / "t.onnx"), str(tmp_path / "t.safetensors"))
    assert len(onnx.load(tmp_path / "t.onnx").graph.initializer) == 5


def test_anchored_and_overlapping_groups_are_reported_not_collapsed():
    spec = """
    model N {
        in x: [B, 3]
        a = Linear(3, 3, bias=false)
        b = Linear(3, 3, bias=false)
        c = Linear(3, 3, bias=false) tie(0.1) anchor("pre")
        tie(1) a, b
        tie(1) b, c
        return c(b(a(x)))
    }
    """
    program = tiec.loads(spec)
    m = program.torch(seed=0)
    with torch.no_grad():
        m.b.weight.copy_(m.a.weight)
        m.c.weight.copy_(m.a.weight)
    result = collapse(program, m.state_dict(), eps=0.01)
    reasons = {tuple(g.members): (g.collapsed, g.reason) for g in result.groups}
    assert reasons[("c.weight",)] == (False, "tied to an anchor: nothing to share")
    assert reasons[("a.weight", "b.weight")][0]
    assert not reasons[("b.weight", "c.weight")][0]
    assert "shares a tensor with a group collapsed before it" in reasons[("b.weight", "c.weight")][1]


def test_cli_collapse_writes_both_files_and_reports(tmp_path, capsys):
    spec = tmp_path / "m.tie"
    spec.write_text(SPEC)
    program = tiec.load(spec)
    trained = tmp_path / "trained.safetensors"
    m = program.torch(seed=1)
    m.load_state_dict(_trained(program))
    program.save(m, trained)
    out = tmp_path / "out.onnx"
    assert main(["collapse", str(spec), "--weights", str(trained), "--eps", "0.01", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "collapsed 2 of 3 tie group(s) of M (eps 0.01)" in text
    assert "unique parameters 80 → 60; bytes 320 → 240, 80 saved (25.0%)" in text
    assert "#3 c.weight ~ d.weight.T" in text and "kept as a tie" in text
    assert out.exists() and (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("args, message", [
    (["--weights", "missing.safetensors", "--eps", "0.1"], "cannot read weights from"),
    (["--weights", "trained.pt", "--eps", "-1"], "eps must be a finite number ≥ 0"),
])
def test_cli_collapse_errors_leave_no_files(tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.tie").write_text(SPEC)
    torch.save(_trained(tiec.loads(SPEC)), tmp_path / "trained.pt")
    assert main(["collapse", "m.tie", *args, "-o", "out.onnx"]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out.safetensors").exists()
