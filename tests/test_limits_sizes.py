"""Sizes, counts and unrolled totals have documented limits, checked at the spec's location before
anything is allocated; a shared repeat costs nothing per iteration until something unrolls it."""
from __future__ import annotations

import pytest
import torch

import tiec

BODY = "{\n fc = Linear(4, 4)\n x = fc(x)\n}\n"


def _model(lines: str) -> str:
    return "model M {\n in x: [B, 4]\n" + lines + " return x\n}\n"


@pytest.mark.parametrize("src, where, message", [
    (_model(" repeat 1000000000 " + BODY), "4:2",
     "this makes 1,000,000,000 layers once repeats are unrolled; the limit is 200,000"),
    (_model(" repeat 1000 {\n repeat 1000 " + BODY + "}\n"), "5:2",
     "this makes 1,000,000 layers once repeats are unrolled; the limit is 200,000"),
    (_model(" repeat 9223372036854775808 share " + BODY), "3:9",
     "repeat count 9,223,372,036,854,775,808 does not fit in int64"),
    (_model(" repeat 1e30 " + BODY), "3:9", "repeat count 1.000e+30 does not fit in int64"),
    ("model M {\n in x: [B, 4]\n fc = Linear(1e300, 4)\n return fc(x)\n}\n", "3:7",
     "Linear 'in_features' = 1.000e+300 does not fit in int64"),
    ("model M {\n in x: [B, 4]\n fc = Linear(1e8, 1e8)\n return fc(x)\n}\n", "3:2",
     "this makes 10,000,000,100,000,000 parameters; the limit is 10,000,000,000"),
    ("model M {\n in x: [B, 9223372036854775808]\n return x\n}\n", "2:12",
     "a dimension of 9,223,372,036,854,775,808 does not fit in int64"),
])
def test_limits_are_located_errors(src, where, message):
    with pytest.raises(tiec.TieError) as e:
        tiec.loads(src, filename="b.tie")
    assert str(e.value.span) == f"b.tie:{where}" and e.value.message == message


def test_a_shared_repeat_costs_nothing_per_iteration_until_it_is_unrolled(tmp_path):
    program = tiec.loads(_model(" repeat 9223372036854775807 share " + BODY), filename="s.tie")
    assert "for _ in range(self.repeats_0):" in program.python()
    m = type(program.torch())(), program.torch()
    assert sum(p.numel() for p in m[1].parameters()) == 20
    short = type(m[1]).__init__.__code__.co_varnames  # the count is not a model parameter: fixed
    assert "repeats_0" not in short
    with pytest.raises(tiec.TieError, match="unrolled, this repeat makes over 2,000,000 nodes") as e:
        program.onnx(tmp_path / "s.onnx")
    assert str(e.value.span) == "s.tie:3:9" and not (tmp_path / "s.onnx").exists()
    few = tiec.loads(_model(" repeat 5 share " + BODY)).torch()
    x = torch.randn(2, 4)
    want = x
    for _ in range(5):
        want = few.fc(want)
    torch.testing.assert_close(few(x), want)
