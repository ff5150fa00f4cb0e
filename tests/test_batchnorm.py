"""BatchNorm1d/BatchNorm2d and buffers: hand-written torch references loading tiec's state dict
strictly (and tiec's module loading theirs), equal in train mode step by step and in eval mode
after the running statistics were updated; onnxruntime (eval mode) against torch eval; checkpoints
without running statistics refused by name; buffers counted apart from parameters."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from tiec.compiler.buffers import declared_buffers
from tiec.dsl.diagnostics import TieError
from torch import nn

import tiec

CNN = """
model Cnn {
    in img: [N, 3, 8, 8]
    conv = Conv2d(3, 4, 3, padding=1, bias=false)
    bn = BatchNorm2d(4)
    conv2 = Conv2d(4, 4, 3, padding=1, bias=false)
    bn2 = BatchNorm2d(4, eps=1e-3, momentum=0.3, affine=false)
    fc = Linear(4, 2)
    h = relu(bn(conv(img)))
    h = relu(bn2(conv2(h)))
    return fc(mean(mean(h, -1), -1))
}
"""

MLP = """
model Mlp {
    in x: [N, 6]
    in seq: [N, 5, L]
    fc = Linear(6, 5)
    bn = BatchNorm1d(num_features=5)
    head = Linear(5, 3)
    bn_seq = BatchNorm1d(5, momentum=0.5)
    raw = BatchNorm1d(5, track_running_stats=false)
    return head(relu(bn(fc(x)))), raw(bn_seq(seq))
}
"""


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4, eps=1e-3, momentum=0.3, affine=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, img):
        h = torch.relu(self.bn2(self.conv2(torch.relu(self.bn(self.conv(img))))))
        return self.fc(h.mean(dim=(-2, -1)))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.head = nn.Linear(5, 3)
        self.bn_seq = nn.BatchNorm1d(5, momentum=0.5)
        self.raw = nn.BatchNorm1d(5, track_running_stats=False)

    def forward(self, x, seq):
        return self.head(torch.relu(self.bn(self.fc(x)))), self.raw(self.bn_seq(seq))


def _cnn_batch(gen, n=4):
    return (torch.randn(n, 3, 8, 8, generator=gen) * 2 + 1,)


def _mlp_batch(gen, n=4):
    return torch.randn(n, 6, generator=gen) * 3 - 1, torch.randn(n, 5, 7, generator=gen) + 2


def _outputs(module, batch):
    out = module(*batch)
    return out if isinstance(out, tuple) else (out,)


def _train_together(ours, theirs, make_batch, steps=3):
    """A few train-mode forward passes of both on the same batches: outputs equal at each step."""
    ours.train(), theirs.train()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _ in range(steps):
            batch = make_batch(gen)
            for a, b in zip(_outputs(ours, batch), _outputs(theirs, batch), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ours.eval(), theirs.eval()


def _assert_same_state(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize(("spec", "ref_cls", "make_batch"), [(CNN, Cnn, _cnn_batch), (MLP, Mlp, _mlp_batch)],
                         ids=["cnn_bn2d", "mlp_bn1d"])
def test_batchnorm_matches_torch_in_train_and_eval_and_onnxruntime_in_eval(spec, ref_cls, make_batch, tmp_path):
    program = tiec.loads(spec)
    ours = program.torch(seed=3)
    with torch.no_grad():  # affine parameters other than 1 and 0, so that they count
        for name, p in ours.named_parameters():
            if name.startswith("bn") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
    theirs = ref_cls()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    _train_together(ours, theirs, make_batch)
    _assert_same_state(ours, theirs)
    assert int(ours.state_dict()["bn.num_batches_tracked"]) == 3
    assert not torch.equal(ours.bn.running_mean, torch.zeros_like(ours.bn.running_mean))  # they moved

    gen = torch.Generator().manual_seed(11)
    path = tmp_path / "m.onnx"
    program.onnx(path, weights=ours)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for n in (5, 1, 3):  # eval mode normalizes even a batch of one
        batch = make_batch(gen, n)
        with torch.no_grad():
            got, want = _outputs(ours, batch), _outputs(theirs, batch)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        outs = session.run(None, {k: v.numpy() for k, v in zip(names, batch, strict=True)})
        for have, ref in zip(outs, got, strict=True):
            np.testing.assert_allclose(have, ref.numpy(), rtol=1e-3, atol=1e-5)


def test_tiec_module_loads_a_trained_reference_state_dict(tmp_path):
    theirs = Mlp()
    _train_together(theirs, theirs, _mlp_batch)  # the reference's own statistics, moved off 0 and 1
    program = tiec.loads(MLP)
    ours = program.torch()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    _assert_same_state(ours, theirs)
    batch = _mlp_batch(torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(_outputs(ours.eval(), batch), _outputs(theirs.eval(), batch), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ckpt = tmp_path / "mlp.safetensors"  # through a checkpoint file too, checked on the way in
    save_file(theirs.state_dict(), str(ckpt))
    fresh = program.torch(seed=5)
    fresh.load_state_dict(program.load_weights(ckpt), strict=True)
    _assert_same_state(fresh, theirs)


def test_onnx_holds_the_running_statistics_given_not_fresh_ones(tmp_path):
    theirs = Cnn()
    _train_together(theirs, theirs, _cnn_batch)
    path = tmp_path / "m.onnx"
    tiec.loads(CNN).onnx(path, weights=theirs.state_dict())
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    for key in ("bn.running_mean", "bn.running_var", "bn2.running_mean", "bn2.running_var"):
        np.testing.assert_array_equal(stored[key], theirs.state_dict()[key].numpy())
    assert "bn.num_batches_tracked" not in stored  # eval mode never reads it
    assert "bn2.weight" not in stored  # affine=false: no parameters


def test_a_checkpoint_without_running_statistics_is_refused_by_key(tmp_path):
    program = tiec.loads(CNN, filename="cnn.tie")
    state = dict(Cnn().state_dict())
    del state["bn2.running_var"]
    ckpt = tmp_path / "w.safetensors"
    save_file(state, str(ckpt))
    for weights in (state, str(ckpt)):
        with pytest.raises(TieError) as err:
            program.onnx(tmp_path / "m.onnx", weights=weights)
        assert "lack 1 buffer(s) of Cnn: bn2.running_var" in str(err.value)
        assert err.value.render().startswith("cnn.tie:7:5: error:")  # bn2's declaration
        assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(TieError, match="bn2.running_var"):
        program.load_weights(ckpt)


def test_buffers_are_ir_facts_and_not_parameters():
    program = tiec.loads(MLP)
    bufs = {b.name: (b.shape, b.dtype, b.persistent) for b in declared_buffers(program.ir, "Mlp")}
    assert bufs == {f"{layer}.{slot}": shape for layer in ("bn", "bn_seq") for slot, shape in (
        ("running_mean", ((5,), "f32", True)), ("running_var", ((5,), "f32", True)),
        ("num_batches_tracked", ((), "i64", True)))}
    assert [p.name for p in program.ir.models["Mlp"].params if "running" in p.name] == []
    stats = program.stats()["models"]["Mlp"]
    assert stats["unique_params"] == sum(p.numel() for p in Mlp().parameters())
    reference_buffers = [b for b in Mlp().buffers()]
    assert stats["buffer_values"] == sum(b.numel() for b in reference_buffers)  # 5 + 5 + 1, twice
    assert stats["buffer_bytes"] == sum(b.numel() * b.element_size() for b in reference_buffers)
    half = tiec.loads(MLP, dtype="f16")  # statistics in the layer's dtype, the count stays i64
    dtypes = {b.slot: b.dtype for b in declared_buffers(half.ir, "Mlp") if b.layer == "bn"}
    assert dtypes == {"running_mean": "f16", "running_var": "f16", "num_batches_tracked": "i64"}
    assert {k: v.dtype for k, v in half.torch().state_dict().items() if k.startswith("bn.")} == {
        "bn.weight": torch.float16, "bn.bias": torch.float16, "bn.running_mean": torch.float16,
        "bn.running_var": torch.float16, "bn.num_batches_tracked": torch.int64}


@pytest.mark.parametrize(("decl", "call", "where", "message"), [
    ("b = BatchNorm2d(0)", "b(img)", "3:9", "BatchNorm2d size 'num_features' must be positive, got 0"),
    ("b = BatchNorm2d(-2)", "b(img)", "3:9", "BatchNorm2d size 'num_features' must be positive, got -2"),
    ("b = BatchNorm2d(4, momentum=1.5)", "b(img)", "3:9", "BatchNorm2d momentum must be in [0, 1], got 1.5"),
    ("b = BatchNorm2d(3)", "b(img)", "4:9", "BatchNorm2d 'b' expects [N, 3, H, W], got [N, 4, 8, 8]"),
    ("b = BatchNorm1d(4)", "b(img)", "4:9", "BatchNorm1d 'b' expects [N, 4] or [N, 4, L], got [N, 4, 8, 8]"),
    ("b = BatchNorm1d(5)", "b(seq)", "4:9", "BatchNorm1d 'b' expects [N, 5] or [N, 5, L], got [N, 4, 6]"),
    ("b = BatchNorm2d(4)\n    c = BatchNorm2d(4)\n    tie(0.1) b.running_mean, c.running_mean", "c(b(img))",
     "5:14", "'b.running_mean' names no layer or parameter"),
    ("b = BatchNorm2d(4, affine=false)\n    c = BatchNorm2d(4)\n    share c.running_var, b.running_var", "c(b(img))",
     "5:11", "'c.running_var' names no layer or parameter"),
])
def test_bad_batchnorm_uses_are_located(decl, call, where, message):
    text = f"model M {{\n    in img: [N, 4, 8, 8]\n    {decl}\n    y = {call}\n    return y\n}}\n"
    text = text.replace("in img: [N, 4, 8, 8]", "in img: [N, 4, 8, 8]\n    in seq: [N, 4, 6]") if "seq" in call \
        else text
    with pytest.raises(TieError) as err:
        tiec.loads(text, filename="bn.tie")
    rendered = err.value.render()
    assert message in rendered
    line, col = where.split(":")
    line = str(int(line) + 1) if "seq" in call else line
    assert rendered.startswith(f"bn.tie:{line}:{col}: error:")


def test_cli_export_refuses_a_checkpoint_without_running_statistics(tmp_path, capsys):
    from tiec import cli

    spec = tmp_path / "cnn.tie"
    spec.write_text(CNN)
    state = dict(Cnn().state_dict())
    del state["bn.running_mean"]
    ckpt = tmp_path / "w.safetensors"
    save_file(state, str(ckpt))
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(spec), "-o", str(out), "--weights", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:5:5: error: the weights lack 1 buffer(s) of Cnn: bn.running_mean" in err
    assert "Traceback" not in err and not out.exists()
    save_file(dict(Cnn().state_dict()), str(ckpt))  # the whole state dict exports
    assert cli.main(["export", str(spec), "-o", str(out), "--weights", str(ckpt)]) == 0 and out.exists()


def test_sharing_two_batchnorms_shares_their_parameters_not_their_statistics():
    program = tiec.loads("model M {\n    in x: [N, 4]\n    a = BatchNorm1d(4)\n    b = BatchNorm1d(4) share a\n"
                         "    return b(a(x) * 3.0)\n}\n")
    module = program.torch()
    assert module.b.weight is module.a.weight and module.b.bias is module.a.bias
    assert module.b.running_mean is not module.a.running_mean
    with torch.no_grad():
        module.train()(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) + 2)
    assert not torch.allclose(module.a.running_var, module.b.running_var)  # each layer's own batches
    assert program.stats()["models"]["M"]["unique_params"] == 8
    assert program.stats()["models"]["M"]["buffer_values"] == 2 * (4 + 4 + 1)


SCHEDULED = """
block Unit(d) {
    in x: [B, d]
    fc = Linear(d, d)
    bn = BatchNorm1d(d)
    return bn(fc(x))
}
model M(d = 4) {
    in x: [B, d]
    repeat 4 share cycle(2) {
        blk = Unit(d)
        x = blk(x)
    }
    return x
}
"""


def test_a_scheduled_repeat_shares_parameters_but_never_running_statistics():
    module = tiec.loads(SCHEDULED).torch().train()
    assert module.blk[2].fc.weight is module.blk[0].fc.weight and module.blk[2].bn.weight is module.blk[0].bn.weight
    assert module.blk[2].bn is not module.blk[0].bn  # each copy keeps its own statistics
    assert module.blk[2].bn.running_mean.data_ptr() != module.blk[0].bn.running_mean.data_ptr()
    module(torch.randn(8, 4))
    # copy 0 saw the input, copy 2 what copies 0 and 1 made of it: their statistics differ
    assert not torch.equal(module.blk[0].bn.running_mean, module.blk[2].bn.running_mean)
