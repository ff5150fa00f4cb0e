"""Free parameters (`bias = Parameter([vocab])`: a tensor that belongs to no layer) and alias keys
(one tensor under two state-dict keys, as HF stores ALBERT's `predictions.decoder.bias` and
`predictions.bias`). Each is checked against a hand-written module with the same keys and aliasing:
strict state-dict loads both ways, outputs, onnxruntime, one initializer per tensor, and counts."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tiec
from tests.emitted import load_emitted
from tiec import cli

# BERT's head: the decoder is the word embeddings read transposed, then a free bias; ALBERT's: a
# decoder whose bias *is* `predictions.bias` (one tensor, two keys), and its weight the embeddings'.
SPEC = """\
block BertHead(d, vocab) {
    in h: [B, T, d]
    in table: [vocab, d]
    dense = Linear(d, d)
    bias = Parameter([vocab])
    return gelu(dense(h)) @ transpose(table, 0, 1) + bias
}
block AlbertHead(d, e, vocab) {
    in h: [B, T, d]
    dense = Linear(d, e)
    LayerNorm = LayerNorm(e)
    decoder = Linear(e, vocab)
    bias = Parameter([vocab])
    share decoder.bias, bias
    return decoder(LayerNorm(gelu(dense(h))))
}
model Heads(d = 8, e = 4, vocab = 11) {
    in ids: i64[B, T]
    embed = Embedding(vocab, d)
    small = Embedding(vocab, e)
    scale = Parameter([d], init="ones")
    cls = BertHead(d, vocab)
    predictions = AlbertHead(d, e, vocab)
    share predictions.decoder.weight, small.weight
    h = embed(ids) * scale
    return cls(h, embed.weight), predictions(h)
}
"""


class ReferenceBertHead(nn.Module):
    def __init__(self, d, vocab):
        super().__init__()
        self.dense = nn.Linear(d, d)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, h, table):
        return F.gelu(self.dense(h)) @ table.T + self.bias


class ReferenceAlbertHead(nn.Module):
    """HF's AlbertMLMHead layout, with its decoder's bias tied to `bias` as HF ties them."""

    def __init__(self, d, e, vocab):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(e)
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.dense = nn.Linear(d, e)
        self.decoder = nn.Linear(e, vocab)
        self.decoder.bias = self.bias

    def forward(self, h):
        return self.decoder(self.LayerNorm(F.gelu(self.dense(h))))


class ReferenceHeads(nn.Module):
    def __init__(self, d=8, e=4, vocab=11):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.small = nn.Embedding(vocab, e)
        self.scale = nn.Parameter(torch.ones(d))
        self.cls = ReferenceBertHead(d, vocab)
        self.predictions = ReferenceAlbertHead(d, e, vocab)
        self.predictions.decoder.weight = self.small.weight

    def forward(self, ids):
        h = self.embed(ids) * self.scale
        return self.cls(h, self.embed.weight), self.predictions(h)


def _emitted(program, tmp_path):
    return load_emitted(program.python(), tmp_path, "emitted")


def _randomized(module: nn.Module) -> nn.Module:
    with torch.no_grad():  # every tensor away from its init, so a misplaced one shows
        gen = torch.Generator().manual_seed(7)
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return module


def test_free_parameters_have_their_own_keys():
    live = tiec.loads(SPEC).torch()
    keys = set(live.state_dict())
    assert {"scale", "cls.bias", "predictions.bias", "predictions.decoder.bias"} <= keys
    assert keys == set(ReferenceHeads().state_dict())
    torch.testing.assert_close(live.scale, torch.ones(8))  # init="ones"
    torch.testing.assert_close(live.cls.bias, torch.zeros(11))  # the default init: zeros


def test_alias_keys_are_one_tensor_and_load_strictly_both_ways(tmp_path):
    program = tiec.loads(SPEC)
    reference = _randomized(ReferenceHeads()).eval()
    live = program.torch().eval()
    emitted = _emitted(program, tmp_path).Heads().eval()
    for module in (live, emitted):  # an HF-style dict, both alias keys present
        module.load_state_dict(reference.state_dict(), strict=True)
        assert module.predictions.bias is module.predictions.decoder.bias
        assert module.predictions.decoder.weight is module.small.weight
    back = ReferenceHeads()
    back.load_state_dict(_randomized(program.torch()).state_dict(), strict=True)  # and tiec's dict into HF's
    assert back.predictions.bias is back.predictions.decoder.bias
    ids = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(ids)
        for module in (live, emitted):
            for have, ref in zip(module(ids), want, strict=True):
                torch.testing.assert_close(have, ref, rtol=1e-5, atol=1e-5)


def test_free_parameters_and_aliases_in_onnx(tmp_path):
    program = tiec.loads(SPEC)
    live = program.torch().eval()
    live.load_state_dict(_randomized(ReferenceHeads()).state_dict(), strict=True)
    path = tmp_path / "heads.onnx"
    program.onnx(path, weights=live)
    names = [t.name for t in onnx.load(str(path)).graph.initializer]
    assert "scale" in names and "cls.bias" in names
    # the alias group and the tied decoder weight: one initializer each, under the canonical key
    assert sum(n in ("predictions.bias", "predictions.decoder.bias") for n in names) == 1
    assert sum(n in ("small.weight", "predictions.decoder.weight") for n in names) == 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t in ((2, 5), (1, 3)):
        ids = torch.randint(0, 11, (b, t), generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            want = live(ids)
        for have, ref in zip(session.run(None, {"ids": ids.numpy()}), want, strict=True):
            np.testing.assert_allclose(have, ref.numpy(), rtol=1e-3, atol=1e-5)


def test_stats_count_free_parameters_once():
    stats = tiec.loads(SPEC).stats()["models"]["Heads"]
    assert stats["unique_params"] == sum(p.numel() for p in ReferenceHeads().parameters())
    assert stats["declared_params"] == sum(t.numel() for t in ReferenceHeads().state_dict().values())


def test_free_parameters_tie_and_share():
    program = tiec.loads("""\
model M(d = 3) {
    in x: [B, d]
    a = Parameter([d])
    b = Parameter([d]) tie(0.5) a
    w = Parameter([d, d])
    fc = Linear(d, d, bias=false) share weight = w
    repeat 2 share {
        c = Parameter([d], init="ones")
        x = x + c
    }
    return fc(x) + a + b
}
""")
    live = program.torch()
    assert live.fc.weight is live.w
    with torch.no_grad():
        live.a.copy_(torch.tensor([1.0, 2.0, 3.0]))
        live.b.copy_(torch.tensor([0.0, 2.0, 5.0]))
        live.w.copy_(torch.eye(3) * 2)
    assert float(live.tie_penalty().detach()) == pytest.approx(0.5 * (1.0 + 0.0 + 4.0))
    x = torch.tensor([[1.0, 0.0, -1.0]])
    with torch.no_grad():  # (x + 2·ones) · 2I + a + b
        torch.testing.assert_close(live(x), torch.tensor([[7.0, 8.0, 10.0]]))
    assert set(live.state_dict()) == {"a", "b", "w", "fc.weight", "c"}


def test_free_parameter_dtype_is_kept():
    live = tiec.loads("model M {\n in x: f16[B, 4]\n s = Parameter([4], dtype=\"f16\")\n return x * s\n}\n").torch()
    assert live.s.dtype == torch.float16


@pytest.mark.parametrize("body, where, message", [
    ("a = Parameter([4])\n return a(x)", "4:9", "'a' is a parameter, not a layer; it cannot be called"),
    ("repeat 2 {\n  a = Parameter([4])\n  x = x + a\n }\n return x", "4:3",
     "a Parameter cannot be declared inside `repeat`"),
    ("a = Parameter([4, 0])\n return x + a", "3:16", "'shape' must be at least 1"),
    ("a = Parameter([4], init=\"randn\")\n return x + a", "3:26", "init"),
    ("a = Parameter([4])\n fc = Linear(4, 4)\n share fc, a\n return fc(x) + a", "5:12",
     "cannot share a single parameter with a whole layer"),
    ("a = Parameter([4])\n return x + a.T", "4:13", "'.T' needs a 2-D parameter"),
    ("a = Parameter([4], dtype=\"f64\")\n return x @ a", "4:9", "dtypes differ"),
])
def test_free_parameter_misuse_is_located(tmp_path, capsys, body, where, message):
    spec = tmp_path / "m.tie"
    spec.write_text(f"model M {{\n in x: [B, 4]\n {body}\n}}\n")
    assert cli.main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{spec}:{where}: error: ") and message in err.splitlines()[0], err
    assert "Traceback" not in err


def test_a_free_matrix_shared_transposed_with_a_layer(tmp_path):
    """A 2-D free parameter as the canonical of a transposed share: the Linear reads it as `W.T`."""
    program = tiec.loads("""\
model M {
    in x: [B, 6]
    W = Parameter([4, 6])
    dec = Linear(4, 6, bias=false) share weight = W.T
    return dec(x @ W.T)
}
""")
    live = program.torch().eval()
    assert set(live.state_dict()) == {"W"}
    with torch.no_grad():
        live.W.copy_(torch.randn(4, 6, generator=torch.Generator().manual_seed(3)))
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = (x @ live.W.T) @ live.W  # by hand: the decoder's weight [6, 4] is W.T
        torch.testing.assert_close(live(x), want)
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=live)
    assert [t.name for t in onnx.load(str(path)).graph.initializer] == ["W"]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-5)


def test_a_uniform_parameter_draws_from_its_bound_as_torch_rnns_do():
    program = tiec.loads("""
model M(h = 64) {
    in x: [B, h]
    w = Parameter([h, 4 * h], init="uniform", bound=1.0 / h)
    return x @ w
}""")
    torch.manual_seed(0)
    w = program.torch().w.detach()
    assert w.abs().max() <= 1 / 64 and w.abs().max() > 0.9 / 64
    assert abs(w.std().item() - (1 / 64) / 3 ** 0.5) < 1e-3  # U(-b, b) has std b/√3
    assert "uniform_(-(1.0 / h), 1.0 / h)" in program.python()
