"""Names Python or PyTorch keep for themselves, nesting limits, and constructor defaults: each is a
located error or works, in the live module and in the emitted file alike."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import tiec
from tiec import cli


def _emitted(program, tmp_path, name="emitted"):
    path = tmp_path / f"{name}.py"
    path.write_text(program.python())
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("model, params, dims, cls, kwarg", [
    ("class", "", "4", "class_", None),
    ("__builtins__", "", "4", "builtins", None),
    ("M", "(__class__ = 4)", "__class__", "M", "class_"),
    ("M", "(lambda = 4, def = 4)", "lambda", "M", "lambda_"),
])
def test_python_names_are_renamed_in_the_emitted_code(tmp_path, model, params, dims, cls, kwarg):
    program = tiec.loads(f"model {model}{params} {{\n in x: [B, {dims}]\n fc = Linear({dims}, 4)\n"
                         " return relu(fc(x))\n}\n")
    live = program.torch()
    assert type(live).__name__ == cls
    emitted = getattr(_emitted(program, tmp_path), cls)()
    emitted.load_state_dict(live.state_dict(), strict=True)
    x = torch.randn(2, 4)
    torch.testing.assert_close(emitted(x), live(x))
    if kwarg:
        assert type(live)(**{kwarg: 4}).fc.in_features == 4


@pytest.mark.parametrize("src, where, message", [
    ("model M {\n in x: [B, 4]\n forward = Linear(4, 4)\n return forward(x)\n}\n", "3:2",
     "layer name 'forward' is an nn.Module attribute; PyTorch cannot hold a submodule by that name"),
    ("model M {\n in x: [B, 4]\n _parameters = Linear(4, 4)\n return _parameters(x)\n}\n", "3:2",
     "layer name '_parameters' is an nn.Module attribute"),
    (("model M {\n in x: [B, T, 4]\n fc = Linear(4, 4)\n attn = SelfAttention(4, 2)\n"
      " share fc.weight, attn.out_proj.weight.T\n return fc(attn(x))\n}\n"), "5:19",
     "'M.attn.out_proj.weight' would be read transposed, but a SelfAttention layer reads its 'out_proj.weight' only"),
    ("model to {\n in x: [B, 4]\n return x\n}\nmodel N {\n in x: [B, 4]\n return x\n}\n", "1:7",
     "model name 'to' is an nn.Module attribute"),
])
def test_reserved_names_are_located_errors(tmp_path, capsys, src, where, message):
    spec = tmp_path / "m.tie"
    spec.write_text(src)
    assert cli.main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{spec}:{where}: error: {message}") and "Traceback" not in err


def test_dependent_defaults_follow_in_the_emitted_constructor(tmp_path):
    program = tiec.loads("model M(d = 8, h = 2 * d) {\n in x: [B, d]\n fc = Linear(d, h)\n return fc(x)\n}\n")
    assert "def __init__(self, d=8, h=None):" in program.python()
    for cls in (type(program.torch()), _emitted(program, tmp_path).M):
        assert cls(d=4).fc.weight.shape == (8, 4)  # as --set d=4 gives
        assert cls(d=4, h=3).fc.weight.shape == (3, 4)
    assert tiec.loads(program.ir.source.text, {"d": 4}).torch().fc.weight.shape == (8, 4)


def test_nesting_limits_are_located():
    deep = "relu(" * 65 + "x" + ")" * 65
    with pytest.raises(tiec.TieError) as e:
        tiec.loads(f"model M {{\n in x: [B, 4]\n return {deep}\n}}\n", filename="d.tie")
    assert e.value.render().startswith("d.tie:3:") and "the limit is 64" in e.value.message
    nested = "model M {\n in x: [B, 4]\n" + "repeat 1 {\n" * 17 + "x = relu(x)\n" + "}\n" * 17 + " return x\n}\n"
    with pytest.raises(tiec.TieError, match="repeats nest 17 deep here; the limit is 16") as e:
        tiec.loads(nested, filename="r.tie")
    assert str(e.value.span) == "r.tie:3:8"
    chain = "".join(f"block B{i} {{\n in x: [B, 4]\n b = B{i + 1}()\n return b(x)\n}}\n" for i in range(40))
    chain += "block B40 {\n in x: [B, 4]\n return relu(x)\n}\nmodel M {\n in x: [B, 4]\n b = B0()\n return b(x)\n}\n"
    with pytest.raises(tiec.TieError, match="blocks nest more than 32 deep here") as e:
        tiec.loads(chain, filename="b.tie")
    assert str(e.value.span) == "b.tie:158:6"  # B31 instantiating B32: the 33rd block deep
