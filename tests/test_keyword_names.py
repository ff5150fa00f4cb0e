"""Keywords as instance names: `model = Decoder(…)`, `encoder.block[0]`, a layer called `in` or
`return`. Each keeps the user's name as its state-dict key (so an HF-style checkpoint loads strictly),
in the live module, the emitted file and ONNX alike; a keyword still cannot start what it starts."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import tiec
from tests.emitted import load_emitted
from tiec import cli

# Llama's top-level `model` and T5's `block`/`layer`, plus every other word the grammar reserves.
SPEC = """\
block Attn(d) {
    in x: [B, d]
    q_proj = Linear(d, d, bias=false)
    return q_proj(x)
}
block Stack(d, n) {
    in x: [B, d]
    repeat n {
        layer = Attn(d)
        x = layer(x)
    }
    return x
}
block Decoder(d) {
    in x: [B, d]
    block = Stack(d, 2)
    return block(x)
}
model Llama(d = 4) {
    in x: [B, d]
    model = Decoder(d)
    in = Linear(d, d)
    return = Linear(d, d)
    repeat = Linear(d, d)
    share = Linear(d, d)
    tie = Linear(d, d) tie(0.5) share
    anchor = Linear(d, d, bias=false) share weight = model.block.layer[1].q_proj.weight
    h = return(in(model(x)))
    return anchor(tie(share(repeat(h))))
}
share Llama.in.bias, Llama.return.bias
"""


class ReferenceAttn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=False)

    def forward(self, x):
        return self.q_proj(x)


class ReferenceLlama(nn.Module):
    """The same keys by hand: a module `model.block.layer.<i>`, and layers Python cannot spell."""

    def __init__(self, d=4):
        super().__init__()
        self.model = nn.Module()
        self.model.block = nn.Module()
        self.model.block.layer = nn.ModuleList([ReferenceAttn(d) for _ in range(2)])
        for name in ("in", "return", "repeat", "share", "tie"):
            setattr(self, name, nn.Linear(d, d))
        self.anchor = nn.Linear(d, d, bias=False)
        self.anchor.weight = self.model.block.layer[1].q_proj.weight
        getattr(self, "return").bias = getattr(self, "in").bias

    def forward(self, x):
        for layer in self.model.block.layer:
            x = layer(x)
        h = getattr(self, "return")(getattr(self, "in")(x))
        return self.anchor(self.tie(self.share(self.repeat(h))))


def _emitted(program, tmp_path):
    return load_emitted(program.python(), tmp_path, "emitted")


def test_keyword_instances_keep_their_keys_and_match_a_reference(tmp_path):
    program = tiec.loads(SPEC)
    live = program.torch(seed=3).eval()
    reference = ReferenceLlama().eval()
    reference.load_state_dict(live.state_dict(), strict=True)
    assert set(live.state_dict()) == set(reference.state_dict())
    assert "model.block.layer.1.q_proj.weight" in live.state_dict() and "in.bias" in live.state_dict()
    emitted = _emitted(program, tmp_path).Llama().eval()
    emitted.load_state_dict(reference.state_dict(), strict=True)  # and back: the reference's dict loads
    live.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(x)
        torch.testing.assert_close(live(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(emitted(x), want, rtol=1e-5, atol=1e-5)
    # one tensor per share group, as in the reference
    assert live.anchor.weight is live.model.block.layer[1].q_proj.weight
    assert getattr(live, "in").bias is getattr(live, "return").bias
    assert float(live.tie_penalty().detach()) > 0  # `tie(0.5) share`: the tie on the layer called `share` counts


def test_keyword_instances_export_to_onnx(tmp_path):
    program = tiec.loads(SPEC)
    live = program.torch(seed=4).eval()
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=live)
    names = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert "in.weight" in names and "model.block.layer.1.q_proj.weight" in names
    assert "anchor.weight" not in names and "return.bias" not in names  # shared: stored once
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = live(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], want, rtol=1e-3, atol=1e-5)


def test_stats_count_keyword_instances():
    stats = tiec.loads(SPEC).stats()
    reference = ReferenceLlama()
    assert stats["models"]["Llama"]["unique_params"] == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("body, where, message", [
    # a layer called `in` is still a layer; `in` followed by a name still declares an input
    ("in = Linear(4, 4)\n in x: [B, 4]\n return in(in)", "4:12", "'in' is a layer, not a value"),
    ("fc = Linear(4, 4)\n return = fc\n return fc(x)", "4:11", "'fc' is a layer, not a value"),
    ("model = Linear(4, 4)\n model = Linear(4, 4)\n return model(x)", "4:2", "'model' is already declared"),
    ("in x2 = Linear(4, 4)\n return x", "3:8", "unexpected '='; expected ':'"),
])
def test_keyword_misuse_is_located(tmp_path, capsys, body, where, message):
    spec = tmp_path / "m.tie"
    head = "" if body.startswith("in = ") else " in x: [B, 4]\n"
    spec.write_text(f"model M {{\n{head} {body}\n}}\n")
    assert cli.main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{spec}:{where}: error: {message}") and "Traceback" not in err


T5_SPEC = """\
block Attn(d) {
    in x: [B, T, d]
    q = Linear(d, d, bias=false)
    return q(x)
}
block Layer(d) {
    in x: [B, T, d]
    SelfAttention = Attn(d)
    return SelfAttention(x)
}
block Block(d) {
    in x: [B, T, d]
    repeat 1 {
        layer = Layer(d)
        x = layer(x)
    }
    return x
}
block Stack(d) {
    in x: [B, T, d]
    repeat 2 {
        block = Block(d)
        x = block(x)
    }
    return x
}
model T5(d = 4) {
    in x: [B, T, d]
    encoder = Stack(d)
    lm_head = Linear(d, d, bias=false) share weight = encoder.block[1].layer[0].SelfAttention.q.weight
    return lm_head(encoder(x))
}
"""


def test_t5_style_paths_through_keyword_and_layer_kind_names():
    """`encoder.block.<i>.layer.0.SelfAttention.q.weight`: `block` a keyword, `SelfAttention` a layer
    kind's name, both as instance names; the share reaches through them by index."""
    live = tiec.loads(T5_SPEC).torch().eval()
    reference = nn.Module()
    reference.encoder = nn.Module()
    reference.encoder.block = nn.ModuleList()
    for _ in range(2):
        blk = nn.Module()
        blk.layer = nn.ModuleList([nn.Module()])
        blk.layer[0].SelfAttention = ReferenceAttn(4)
        reference.encoder.block.append(blk)
    reference.lm_head = nn.Linear(4, 4, bias=False)
    reference.lm_head.weight = reference.encoder.block[1].layer[0].SelfAttention.q_proj.weight
    keys = {k.replace("q_proj", "q") for k in reference.state_dict()}
    assert set(live.state_dict()) == keys
    assert live.lm_head.weight is live.encoder.block[1].layer[0].SelfAttention.q.weight
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = x
        for blk in live.encoder.block:
            want = want @ blk.layer[0].SelfAttention.q.weight.T
        torch.testing.assert_close(live(x), want @ live.lm_head.weight.T)
