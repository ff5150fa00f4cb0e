"""examples/resnet18.tie against a hand-written ResNet-18 in torchvision's exact layout
(`tests/references.py`; torchvision does not import against the pinned torch): the reference's
own state dict loads strictly, outputs match in eval mode, one train-mode forward updates the
running statistics as the reference's do, onnxruntime matches torch, every tensor is stored once,
and the unique parameters are the reference's. Full widths, 2 × 3 × 32 × 32 images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import tiec

from .references import ResNet

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "resnet18.tie"
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def reference(layers=(2, 2, 2, 2), num_classes=10) -> ResNet:
    torch.manual_seed(0)
    net = ResNet(layers, num_classes)
    with torch.no_grad():  # running statistics and affine parameters away from their defaults
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_resnet18_keys_are_torchvisions():
    module = tiec.load(EXAMPLE).torch()
    ref = ResNet()
    assert list(module.state_dict()) == list(ref.state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn1.running_var",
                "layer2.0.downsample.0.weight", "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias",
                "fc.weight", "fc.bias"):
        assert key in module.state_dict()
    assert "layer1.0.downsample.0.weight" not in module.state_dict()


def test_resnet18_loads_the_reference_checkpoint_and_matches_it_in_eval_mode(tmp_path):
    ref = reference()
    program = tiec.load(EXAMPLE, {"num_classes": 10})
    module = program.torch().eval()
    module.load_state_dict(ref.state_dict(), strict=True)
    assert program.stats()["models"]["ResNet18"]["unique_params"] == sum(p.numel() for p in ref.parameters())
    with torch.no_grad():
        want = ref(IMAGES)
        got = module(IMAGES)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    path = tmp_path / "resnet18.onnx"
    program.onnx(path, weights=module)
    model = onnx.load(path)
    stored = [i for i in model.graph.initializer if not i.name.startswith("~")]
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    for init in stored:  # each initializer is one of the module's tensors, and no tensor is stored twice
        assert init.name in tensors, init.name
    assert len({i.name for i in stored}) == len(stored)
    unique_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    ratio = os.path.getsize(path) / unique_bytes  # the BatchNorms' running statistics are the rest
    assert 1.0 < ratio < 1.01, ratio
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": IMAGES.numpy()})[0], got.numpy(), rtol=1e-3, atol=1e-5)


def test_one_train_mode_forward_updates_the_running_statistics_as_the_reference():
    ref = reference()
    module = tiec.load(EXAMPLE, {"num_classes": 10}).torch()
    module.load_state_dict(ref.state_dict(), strict=True)
    module.train()
    ref.train()
    got, want = module(IMAGES), ref(IMAGES)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for (key, mine), theirs in zip(module.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=key)
    assert int(module.state_dict()["layer3.0.downsample.1.num_batches_tracked"]) == 1


def test_a_deeper_resnet_by_constructor_arguments():
    """`layers=[3, 4, 6, 3]` (torchvision's resnet34 layout) by the constructor alone, at width 16."""
    module = type(tiec.load(EXAMPLE).torch())(num_classes=7, width=16, layers1=3, layers2=4, layers3=6, layers4=3)
    torch.manual_seed(0)
    ref = ResNet((3, 4, 6, 3), num_classes=7, width=16).eval()
    assert list(module.state_dict()) == list(ref.state_dict())
    module.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(module.eval()(IMAGES), ref(IMAGES), rtol=1e-5, atol=1e-5)
