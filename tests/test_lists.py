"""Lists of children (`ds = [Conv2d(…), BatchNorm2d(…)]`, `ds[i]`, `ds(x)`) and appended copies
(`block += Kind(…)` in a repeat), against hand-written PyTorch modules with the same keys: strict
loads, outputs, shares and ties through `name[i]`, depth set by a constructor argument, the
emitted source against the live module, and onnxruntime against torch."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import tiec

# A downsampling block (a chain of two children of different kinds), a block of two inputs and
# two outputs reached by index, a special first block followed by n ordinary ones appended in a
# repeat, and a share through indices.
SPEC = """
block Down(cin, cout) {
    in x: [B, cin, H, W]
    conv = Conv2d(cin, cout, 3, stride=2, padding=1, bias=false)
    bn = BatchNorm2d(cout)
    downsample = [Conv2d(cin, cout, 1, stride=2, bias=false), BatchNorm2d(cout)]
    return relu(bn(conv(x))) + downsample(x)
}
block First(d) {
    in x: [B, d]
    fc = Linear(d, d)
    bias = Linear(d, d)
    return tanh(fc(x)), bias(x)
}
block Layer(d) {
    in x: [B, d]
    in bias: [B, d]
    fc = Linear(d, d)
    return tanh(fc(x)) + bias
}
model Net(n = 2, d = 8) {
    in img: [B, 3, 8, 8]
    stem = [Down(3, 4), Conv2d(4, d, 4)]
    h = flatten(stem(img), 1)
    block = [First(d)]
    x, bias = block[0](h)
    repeat n {
        block += Layer(d)
        x = block(x, bias)
    }
    head = [Linear(d, d), Linear(d, 3)]
    share head[0].weight, block[1].fc.weight
    return head[1](relu(head[0](x)))
}
"""


class Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))) + self.downsample(x)


class First(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc, self.bias = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return torch.tanh(self.fc(x)), self.bias(x)


class Layer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x, bias):
        return torch.tanh(self.fc(x)) + bias


class Net(nn.Module):
    """The spec's model written by hand: `block.0` is a `First`, `block.1 … block.n` are `Layer`s."""

    def __init__(self, n=2, d=8):
        super().__init__()
        self.stem = nn.Sequential(Down(3, 4), nn.Conv2d(4, d, 4))
        self.block = nn.ModuleList([First(d), *(Layer(d) for _ in range(n))])
        self.head = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, 3)])
        self.head[0].weight = self.block[1].fc.weight

    def forward(self, img):
        x, bias = self.block[0](torch.flatten(self.stem(img), 1))
        for layer in self.block[1:]:
            x = layer(x, bias)
        return self.head[1](torch.relu(self.head[0](x)))


def reference(n: int = 2) -> Net:
    torch.manual_seed(0)
    net = Net(n)
    with torch.no_grad():  # running statistics that are not the defaults, so eval mode tests them
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_keys_of_children_of_different_kinds_are_the_reference_keys():
    module = tiec.loads(SPEC).torch()
    assert list(module.state_dict()) == list(reference().state_dict())
    assert "stem.0.downsample.1.num_batches_tracked" in module.state_dict()
    assert isinstance(module.stem, nn.Sequential) and isinstance(module.block, nn.ModuleList)
    assert [type(m).__name__ for m in module.block] == ["First", "Layer", "Layer"]


def test_strict_load_and_outputs_match_the_reference_in_eval_and_train_mode():
    ref = reference()
    module = tiec.loads(SPEC).torch().eval()
    module.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(module(IMG), ref(IMG), rtol=1e-5, atol=1e-5)
    module.train()
    ref.train()
    torch.testing.assert_close(module(IMG), ref(IMG), rtol=1e-5, atol=1e-5)
    for (key, got), want in zip(module.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=key)


def test_share_through_an_index_is_one_tensor_with_the_sum_of_both_gradients():
    module = tiec.loads(SPEC).torch()
    assert module.head[0].weight is module.block[1].fc.weight
    stats = tiec.loads(SPEC).stats()["models"]["Net"]
    assert stats["unique_params"] == sum(p.numel() for p in reference().parameters())
    ref = reference()
    module.load_state_dict(ref.state_dict(), strict=True)
    module.eval()(IMG).sum().backward()
    ref(IMG).sum().backward()
    torch.testing.assert_close(module.head[0].weight.grad, ref.head[0].weight.grad)


def test_tie_through_indices_penalises_the_two_children():
    spec = SPEC.replace("share head[0].weight, block[1].fc.weight", "tie(0.5) block[1].fc.weight, block[2].fc.weight")
    module = tiec.loads(spec).torch()
    a, b = module.block[1].fc.weight, module.block[2].fc.weight
    assert a is not b
    torch.testing.assert_close(module.tie_penalty(), 0.5 * ((a - b) ** 2).sum())


@pytest.mark.parametrize("n", [1, 4])
def test_a_constructor_argument_sets_how_many_copies_are_appended(n):
    program = tiec.loads(SPEC)
    module = program.torch()
    bigger = type(module)(n=n).eval()
    ref = reference(n)
    assert list(bigger.state_dict()) == list(ref.state_dict())
    bigger.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(bigger(IMG), ref(IMG), rtol=1e-5, atol=1e-5)
    again = tiec.loads(SPEC, {"n": n}).torch().eval()  # the same depth set at compile time
    again.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again(IMG), ref(IMG), rtol=1e-5, atol=1e-5)


def test_an_index_into_appended_copies_is_checked_by_the_constructor():
    module = tiec.loads(SPEC).torch()
    with pytest.raises(ValueError, match=r"block\[1\], so n must be at least 1"):
        type(module)(n=0)


def test_emitted_source_reads_like_pytorch_and_is_the_live_module(tmp_path):
    program = tiec.loads(SPEC)
    source = program.python()
    assert "self.stem  = nn.Sequential(Down(3, 4), nn.Conv2d(4, d, (4, 4)" in source
    assert "self.downsample = nn.Sequential(nn.Conv2d(cin, cout, (1, 1)" in source
    assert "self.block.extend(Layer(d) for _ in range(n))" in source
    assert "for block in self.block[1:]:" in source
    assert "x, bias = self.block[0](h)" in source
    assert "self.head[1](" in source
    deeper = tiec.loads(SPEC, {"n": 9}).python()
    assert len(deeper.splitlines()) == len(source.splitlines())
    path = tmp_path / "net.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("net_emitted", path)
    emitted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emitted)
    ref = reference()
    standalone, live = emitted.Net().eval(), program.torch().eval()
    for module in (standalone, live):
        module.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(standalone(IMG), live(IMG), rtol=0, atol=0)


def test_onnx_matches_torch_and_stores_the_shared_weight_once(tmp_path):
    program = tiec.loads(SPEC)
    module = program.torch().eval()
    module.load_state_dict(reference().state_dict(), strict=True)
    path = tmp_path / "net.onnx"
    program.onnx(path, weights=module)
    inits = [i for i in onnx.load(path).graph.initializer if not i.name.startswith("~")]
    shared = module.head[0].weight.detach().numpy()
    assert sum(1 for i in inits if np.array_equal(onnx.numpy_helper.to_array(i), shared)) == 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = module(IMG).numpy()
    np.testing.assert_allclose(session.run(None, {"img": IMG.numpy()})[0], want, rtol=1e-3, atol=1e-5)


NESTED = """
block Inner(d) {
    in x: [B, d]
    pair = [Linear(d, d), LayerNorm(d)]
    return pair(x)
}
model Outer(d = 6) {
    in x: [B, d]
    stack = [Inner(d), Inner(d), Linear(d, 2)]
    y = stack(x)
    ys = [Linear(2, 2)]
    repeat 3 {
        ys += Linear(2, 2)
        y = ys(y)
    }
    return ys[0](y), stack[1].pair[0](x)
}
"""


def test_nested_lists_and_a_chain_written_before_the_repeat_that_appends():
    program = tiec.loads(NESTED)
    module = program.torch().eval()
    keys = list(module.state_dict())
    assert keys[:4] == ["stack.0.pair.0.weight", "stack.0.pair.0.bias", "stack.0.pair.1.weight", "stack.0.pair.1.bias"]
    assert "ys.3.weight" in keys and "ys.4.weight" not in keys
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = module.stack[2](module.stack[1].pair[1](module.stack[1].pair[0](
            module.stack[0].pair[1](module.stack[0].pair[0](x)))))
        for i in (1, 2, 3):
            y = module.ys[i](y)
        got, inner = module(x)
        torch.testing.assert_close(got, module.ys[0](y), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(inner, module.stack[1].pair[0](x), rtol=0, atol=0)
    assert "self.ys[:1]" not in program.python()  # `ys(y)` appears only inside the repeat


def test_a_chain_before_the_appending_repeat_runs_only_the_children_it_had():
    spec = """
    model M(n = 2) {
        in x: [B, 4]
        ds = [Linear(4, 4)]
        y = ds(x)
        repeat n {
            ds += Linear(4, 4)
            y = ds(y)
        }
        return ds(y)
    }
    """
    program = tiec.loads(spec)
    module = program.torch().eval()
    assert "self.ds[:1](x)" in program.python()
    x = torch.randn(3, 4)
    with torch.no_grad():
        y = module.ds[0](x)
        for i in (1, 2):
            y = module.ds[i](y)
        for i in (0, 1, 2):
            y = module.ds[i](y)
        torch.testing.assert_close(module(x), y)


def test_a_share_written_in_the_appending_repeat_holds_for_every_copy(tmp_path):
    spec = """
    block L(d) {
        in x: [B, d]
        fc = Linear(d, d)
        return relu(fc(x))
    }
    model M(n = 3, d = 4) {
        in x: [B, d]
        emb = Linear(d, d)
        block = [L(d)]
        x = block[0](emb(x))
        repeat n {
            block += L(d)
            share block.fc.weight, emb.weight
            x = block(x)
        }
        return x
    }
    """
    program = tiec.loads(spec)
    module = program.torch().eval()
    assert all(module.block[i].fc.weight is module.emb.weight for i in (1, 2, 3))
    assert module.block[0].fc.weight is not module.emb.weight
    deeper = type(module)(n=5)
    assert all(deeper.block[i].fc.weight is deeper.emb.weight for i in range(1, 6))
    d = 4
    assert program.stats()["models"]["M"]["unique_params"] == 2 * (d * d + d) + 3 * d  # emb, block.0, 3 biases
    x = torch.randn(2, 4)
    with torch.no_grad():
        want = module.block[0](module.emb(x))
        for i in (1, 2, 3):
            want = torch.relu(nn.functional.linear(want, module.emb.weight, module.block[i].fc.bias))
        torch.testing.assert_close(module(x), want)
        path = tmp_path / "m.onnx"
        program.onnx(path, weights=module)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], want.numpy(), rtol=1e-3, atol=1e-5)
    assert len([i for i in onnx.load(path).graph.initializer if tuple(i.dims) == (4, 4)]) == 2


def test_verify_rejects_a_list_whose_children_are_not_numbered_in_order():
    from dataclasses import replace

    from tiec.compiler.ir import frozen
    from tiec.compiler.verify import IRInvariantError, verify

    program = tiec.loads(SPEC).ir
    verify(program)
    net = program.structure["Net"]
    head = net.instance_map["head"]
    shuffled = tuple(replace(i, items=tuple(reversed(i.items))) if i is head else i for i in net.instances)
    broken = replace(program, structure=frozen({"Net": replace(net, instances=shuffled)}))
    with pytest.raises(IRInvariantError, match="list 'head' has children"):
        verify(broken)
