"""The command line's edges: encodings, output files, and failures that are not the user's."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import tiec
from tiec import cli

SPEC = "model M {\n    in x: [B, 2]\n    return relu(x)\n}\n"


def test_a_byte_order_mark_is_ignored(tmp_path, capsys):
    path = tmp_path / "bom.tie"
    path.write_bytes(b"\xef\xbb\xbf" + SPEC.encode())
    assert cli.main(["check", str(path)]) == 0
    assert "ok: 1 model(s)" in capsys.readouterr().out


def test_a_file_that_is_not_utf8_is_reported_at_the_bad_byte(tmp_path, capsys):
    path = tmp_path / "latin.tie"
    path.write_bytes(b"model M {\xff\n}\n")
    assert cli.main(["check", str(path)]) == 1
    assert capsys.readouterr().err == (f"{path}:1:10: error: the file is not UTF-8 text (byte 9 is 0xff)\n"
                                       "    model M {\ufffd\n"
                                       "             ^\n"
                                       "    hint: save it as UTF-8\n")


def test_compiled_source_is_an_ordinary_file(tmp_path):
    spec, out = tmp_path / "m.tie", tmp_path / "m.py"
    spec.write_text(SPEC)
    assert cli.main(["compile", str(spec), "-o", str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py", "m.tie"]  # no temporary file left


def test_an_internal_error_is_reported_without_a_traceback(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "m.tie"
    spec.write_text(SPEC)

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr("tiec.api.Program.stats", broken)
    assert cli.main(["stats", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "please report" in err and "Traceback" not in err


def test_a_missing_output_folder_is_reported_before_compiling(tmp_path, capsys):
    spec = tmp_path / "m.tie"
    spec.write_text(SPEC)
    assert cli.main(["export", str(spec), "-o", str(tmp_path / "no" / "m.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_stats_show_where_sharing_saves(capsys):
    examples = Path(__file__).resolve().parent.parent / "examples"
    albert = tiec.load(examples / "albert.tie").stats()["models"]["Albert"]["modules"]["layer"]
    bert = tiec.load(examples / "bert.tie").stats()["models"]["Bert"]["modules"]["layer"]
    assert albert["logical_params"] == 12 * albert["unique_params"] == bert["unique_params"] == 85_054_464
    assert cli.main(["stats", str(examples / "albert.tie")]) == 0
    assert "Albert.layer: 85,054,464 / 7,087,872 (12.00x)" in capsys.readouterr().out


def test_stats_do_not_list_a_tied_head_called_once(capsys):
    """GPT-2's lm_head reads the embedding's matrix once: used as often as the tensor it reads."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    head = tiec.load(examples / "gpt2_small.tie").stats()["models"]["GPT2Small"]["modules"]["lm_head"]
    assert head == {"logical_params": 50257 * 768, "unique_params": 0, "read_params": 50257 * 768}
    assert cli.main(["stats", str(examples / "gpt2_small.tie")]) == 0
    out = capsys.readouterr().out
    assert "lm_head" not in out.split("share groups")[0]
    assert "GPT2Small.lm_head.weight" in out  # still listed as a member of the tied group


TWO_MODELS = """model A(d = 4) {
    in x: [B, 8]
    y = reshape(x, [B, 2, d])
    return y
}
model C(d = 4) {
    in x: [B, d]
    fc = Linear(d, 2)
    return fc(x)
}
"""


def test_set_with_model_applies_to_that_model_only(tmp_path, capsys):
    spec = tmp_path / "two.tie"
    spec.write_text(TWO_MODELS)
    out = tmp_path / "c.onnx"
    assert cli.main(["check", str(spec), "--set", "d=6"]) == 1  # A's reshape cannot take d=6
    assert "two.tie:3:9: error: reshape" in capsys.readouterr().err
    assert cli.main(["export", str(spec), "--model", "C", "--set", "d=6", "-o", str(out)]) == 0
    import onnx
    assert [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim][1] == 6
    assert cli.main(["check", str(spec), "--set", "C.d=6"]) == 0
    program = tiec.loads(TWO_MODELS, {"C.d": 6})
    assert program.stats()["models"]["A"]["unique_params"] == 0
    assert program.stats()["models"]["C"]["unique_params"] == 6 * 2 + 2
    assert cli.main(["check", str(spec), "--set", "Q.d=6"]) == 1
    assert "no model 'Q'" in capsys.readouterr().err
