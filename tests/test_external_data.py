"""External data: `--external-data` writes OUT and OUT.data together, streamed, checked, loadable.

References: onnxruntime loading the written path against the PyTorch module; the inline export of
the same weights (tensor for tensor); the ONNX checker on the path.
"""
from __future__ import annotations

import io
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from tiec.backends.onnx import external

import tiec
from tiec import cli

SPEC = """model Net {
    in x: [B, 1024]
    big = Linear(1024, 300)
    small = Linear(300, 1024) share weight = big.weight.T
    return small(relu(big(x)))
}
"""


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "net.tie").write_text(SPEC)
    return tmp_path / "net.tie"


def test_forced_external_data_loads_in_onnxruntime_and_matches_torch(spec, tmp_path):
    program = tiec.load(spec)
    module = program.torch(seed=1)
    out = tmp_path / "out" / "net.onnx"
    out.parent.mkdir()
    info = program.onnx(out, weights=module, external_data=True)
    assert sorted(os.listdir(out.parent)) == ["net.onnx", "net.onnx.data"]
    assert info["data_path"] == str(out) + ".data" and info["data_bytes"] == (out.parent / "net.onnx.data").stat().st_size
    onnx.checker.check_model(str(out), full_check=True)
    bare = onnx.load(str(out), load_external_data=False)
    params = [t for t in bare.graph.initializer if not t.name.startswith("~")]
    assert {t.name for t in params} == {"big.weight", "big.bias", "small.bias"}  # the tied matrix once
    assert all(t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data for t in params)
    big = next(t for t in params if t.name == "big.weight")
    assert int(next(e.value for e in big.external_data if e.key == "offset")) % external.ALIGN == 0  # 1.2 MB: aligned
    x = torch.randn(3, 1024, generator=torch.Generator().manual_seed(0))
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_external_tensors_equal_the_inline_ones_and_exports_repeat_byte_for_byte(spec, tmp_path):
    program = tiec.load(spec)
    module = program.torch(seed=2)
    program.onnx(tmp_path / "inline.onnx", weights=module)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        program.onnx(tmp_path / name / "net.onnx", weights=module, external_data=True)
    inline = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "inline.onnx")).graph.initializer}
    loaded = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "a" / "net.onnx")).graph.initializer}
    assert inline.keys() == loaded.keys() and all(np.array_equal(inline[k], loaded[k]) for k in inline)
    for f in ("net.onnx", "net.onnx.data"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_a_failure_while_writing_leaves_neither_file(spec, tmp_path, monkeypatch, capsys):
    out = tmp_path / "net.onnx"
    out.write_bytes(b"old model")
    (tmp_path / "net.onnx.data").write_bytes(b"old data")
    calls = []

    def failing(self, t, name, array, dtype):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return original(self, t, name, array, dtype)

    original = external.TensorWriter.__call__
    monkeypatch.setattr(external.TensorWriter, "__call__", failing)
    assert cli.main(["export", str(spec), "-o", str(out), "--external-data"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["net.onnx", "net.onnx.data", "net.tie"]  # no temporary folder
    assert out.read_bytes() == b"old model" and (tmp_path / "net.onnx.data").read_bytes() == b"old data"


def test_a_replaced_pair_keeps_its_permissions(spec, tmp_path):
    out = tmp_path / "net.onnx"
    for path in (out, tmp_path / "net.onnx.data"):
        path.write_bytes(b"old")
        path.chmod(0o640)
    tiec.load(spec).onnx(out, external_data=True)
    assert [oct(p.stat().st_mode & 0o777) for p in (out, tmp_path / "net.onnx.data")] == ["0o640", "0o640"]
    assert onnx.load(str(out)).graph.initializer[0].dims


def test_external_data_needs_a_regular_file(spec, capsys):
    assert cli.main(["export", str(spec), "-o", "/dev/null", "--external-data"]) == 1
    assert capsys.readouterr().err == ("/dev/null: error: cannot write /dev/null: it is not a regular file, "
                                       "and the files written beside it need one\n")


def test_past_the_inline_limit_the_data_goes_beside_the_model(spec, tmp_path, monkeypatch):
    monkeypatch.setattr(external, "INLINE_LIMIT", 1000)
    info = tiec.load(spec).onnx(tmp_path / "net.onnx")
    assert info["data_path"] == str(tmp_path / "net.onnx.data")
    assert (tmp_path / "net.onnx").stat().st_size < 10_000


def test_inline_past_the_limit_is_refused_before_writing(spec, tmp_path, monkeypatch):
    monkeypatch.setattr(external, "INLINE_LIMIT", 1000)
    with pytest.raises(ValueError, match="more than one ONNX file holds inline"):
        tiec.load(spec).onnx(tmp_path / "net.onnx", external_data=False)
    assert list(tmp_path.iterdir()) == [spec]


def test_the_progress_bar_appears_only_for_slow_exports_and_when_asked():
    shown, hidden, quick = io.StringIO(), io.StringIO(), io.StringIO()
    for stream, enabled, after in ((shown, True, 0.0), (hidden, False, 0.0), (quick, True, 60.0)):
        bar = external.Progress(2_000_000_000, enabled, stream, after=after)
        bar.advance(1_000_000_000)
        bar.advance(1_000_000_000)
        bar.close()
    assert shown.getvalue().endswith("[##############################] 100% 2.00/2.00 GB\n")
    assert "\rtiec: writing weights [###############               ]  50% 1.00/2.00 GB" in shown.getvalue()
    assert hidden.getvalue() == quick.getvalue() == ""


def test_the_cli_draws_no_bar_when_stderr_is_not_a_terminal(spec, tmp_path, capsys):
    assert cli.main(["export", str(spec), "-o", str(tmp_path / "net.onnx"), "--external-data"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith(f"wrote {tmp_path / 'net.onnx'} and {tmp_path / 'net.onnx.data'}: ")
    assert cli.main(["export", str(spec), "-o", str(tmp_path / "q.onnx"), "--quiet"]) == 0
