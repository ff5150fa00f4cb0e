"""Conv1D (HF's layout), GroupNorm, ConvTranspose2d and adaptive_avg_pool2d: each against the
reference module loading tiec's state dict strictly, and onnxruntime against the live module."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from tiec.dsl.diagnostics import TieError
from transformers.pytorch_utils import Conv1D as HFConv1D

import tiec

SPEC = """
model M {
    in x: [B, T, 6]
    in img: [N, 4, 8, 8]
    c = Conv1D(12, 6)
    g = GroupNorm(2, 4, eps=1e-3)
    up = ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
    y = c(x)
    z = up(g(img))
    p = adaptive_avg_pool2d(z, 1) + adaptive_avg_pool2d(z, [4, 2])
    return y, z, p
}
"""


class Reference(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = HFConv1D(12, 6)
        self.g = torch.nn.GroupNorm(2, 4, eps=1e-3)
        self.up = torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x, img):
        z = self.up(self.g(img))
        return self.c(x), z, F.adaptive_avg_pool2d(z, 1) + F.adaptive_avg_pool2d(z, (4, 2))


def test_layers_match_their_references_and_onnxruntime(tmp_path):
    program = tiec.loads(SPEC)
    module = program.torch(seed=2).eval()
    with torch.no_grad():  # affine GroupNorm parameters other than 1 and 0, so they count
        module.g.weight.uniform_(0.5, 1.5)
        module.g.bias.uniform_(-0.5, 0.5)
    reference = Reference().eval()
    reference.load_state_dict(module.state_dict(), strict=True)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=module)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t in ((2, 5), (1, 3)):
        gen = torch.Generator().manual_seed(t)
        x, img = torch.randn(b, t, 6, generator=gen), torch.randn(b + 1, 4, 8, 8, generator=gen)
        with torch.no_grad():
            got, want = module(x, img), reference(x, img)
        for have, ref in zip(got, want, strict=True):
            torch.testing.assert_close(have, ref, rtol=1e-5, atol=1e-5)
        outs = session.run(None, {"x": x.numpy(), "img": img.numpy()})
        for have, ref in zip(outs, got, strict=True):
            np.testing.assert_allclose(have, ref.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(("decl", "call", "message"), [
    ("g = GroupNorm(3, 4)", "g(img)", "GroupNorm: 4 channels do not split into 3 groups"),
    ("u = ConvTranspose2d(4, 3, 3, stride=2, output_padding=2)", "u(img)", "output_padding (2, 2) must be below"),
    ("c = Conv1D(12, 5)", "c(img)", "Conv1D 'c' expects in_features (nx) = 5 in the last dim"),
    ("", "adaptive_avg_pool2d(img, 3)", "each output size must divide a fixed input size"),
])
def test_bad_layer_uses_are_located(decl, call, message):
    with pytest.raises(TieError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiec.loads(f"model M {{\n    in img: [N, 4, 8, 8]\n    {decl}\n    y = {call}\n    return y\n}}\n")
