"""Configuration values stay finite, and an `eps` is a finite number ≥ 0.

nan passes every `λ ≥ 0`-style check (it compares false with everything) and inf sizes or
strengths reach the backends, so each way a non-finite value can arise is a located error: a
literal past the largest float, arithmetic that overflows, an override from the API or the
command line. LayerNorm, RMSNorm and cosine_similarity take `eps` through the argument kind
"eps", which `config.coerce` checks like a float and then for its range.
"""
from __future__ import annotations

import math

import pytest
from tiec.compiler.catalog import LAYERS, OP_SIGNATURES
from tiec.compiler.config import CVal, coerce
from tiec.compiler.relations import tie_requests
from tiec.dsl.diagnostics import Source, Span

import tiec
from tiec import cli

TIE = "model M(lam = 0.5) {{\n    in x: [B, 4]\n    a = Linear(4, 4)\n    b = Linear(4, 4)\n" \
      "    tie({}) a, b\n    return b(a(x))\n}}\n"
NINES = "9" * 300  # an integer a float can hold; its square cannot


def error(text: str, overrides=None) -> tuple[int, int, int, str]:
    """(line, col, end_col, message) of the one error compiling `text` raises."""
    with pytest.raises(tiec.TieError) as info:
        tiec.loads(text, overrides, "m.tie")
    e = info.value
    return e.span.line, e.span.col, e.span.end_col, e.message


# ----------------------------------------------------------------------------- finite values


def test_a_literal_past_the_largest_float_is_an_error_not_inf():
    assert error(TIE.format("1e400 - 1e400")) == (5, 9, 14, "the number 1e400 is too large: the largest is about 1.8e308")


def test_a_huge_integer_literal_is_shown_shortened():
    assert error(TIE.format("9" * 5000)) == (
        5, 9, 5009, "the number 99999999… (5000 characters) is too large: the largest is about 1.8e308")


def test_the_largest_float_itself_is_accepted():
    program = tiec.loads(TIE.format("1.7976931348623157e308"), filename="m.tie")
    assert [t.strength for t in program.ir.tie_groups] == [1.7976931348623157e308] * 2


def test_float_overflow_in_arithmetic():
    assert error(TIE.format("1e308 * 10 - 1e308 * 10")) == (
        5, 9, 19, "'*' gives inf: configuration values must be finite numbers")


def test_integer_arithmetic_past_the_largest_float():
    assert error(TIE.format(f"0 - {NINES} * {NINES}")) == (
        5, 13, 13 + 2 * 300 + 3, "'*' gives a number larger than about 1.8e308: configuration values must be finite numbers")


def test_overflow_in_a_layer_size():
    text = "model M {\n    in x: [B, 4]\n    fc = Linear(4, 1e308 * 1e308)\n    return fc(x)\n}\n"
    assert error(text) == (3, 20, 33, "'*' gives inf: configuration values must be finite numbers")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_override_from_the_api_is_located_at_its_use(value):
    assert error(TIE.format("lam"), {"lam": value}) == (
        5, 9, 12, f"'lam' is {value}: configuration values must be finite numbers")


def test_an_integer_override_no_float_can_hold():
    assert error(TIE.format("lam"), {"lam": 10**400}) == (
        5, 9, 12, "'lam' is a number larger than about 1.8e308: configuration values must be finite numbers")


def test_tie_requests_refuse_nan_and_inf():
    span = Span(Source("m.tie", "tie(x) a, b\n"), 1, 5, 1, 6)
    for strength in (math.nan, math.inf):
        with pytest.raises(tiec.TieError) as info:
            tie_requests([], strength, "l2", span, span)
        assert info.value.message == f"tie strength must be a finite number ≥ 0, got {strength}"
        assert info.value.span is span


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "9" * 400])
def test_a_non_finite_set_is_a_usage_error(value, tmp_path, capsys):
    path = tmp_path / "m.tie"
    path.write_text(TIE.format("lam"))
    with pytest.raises(SystemExit) as info:
        cli.main(["check", str(path), "--set", f"lam={value}"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"tiec check: error: argument --set: '{value}' is not a finite number"


def test_finite_sets_still_work(tmp_path, capsys):
    path = tmp_path / "m.tie"
    path.write_text(TIE.format("lam"))
    assert cli.main(["stats", str(path), "--json", "--set", "lam=1e-3"]) == 0
    assert '"lambda": 0.001' in capsys.readouterr().out


# ----------------------------------------------------------------------------- eps


def test_the_catalog_gives_every_eps_the_eps_kind():
    rows = [a for spec in LAYERS.values() for a in spec.args] + [a for sig in OP_SIGNATURES.values() for a in sig]
    assert sorted((a.name, a.kind, a.default) for a in rows if a.name == "eps") == [
        ("eps", "eps", 1e-08), ("eps", "eps", 1e-06), *[("eps", "eps", 1e-05)] * 4]  # + GroupNorm, BatchNorm1d/2d


LAYER = "model M {{\n    in x: [B, 4]\n    n = {}\n    return n(x)\n}}\n"
COSINE = "model M {{\n    in x: [B, 4]\n    in y: [B, 4]\n    return cosine_similarity(x, y, {})\n}}\n"


@pytest.mark.parametrize(("text", "position"), [
    (LAYER.format("LayerNorm(4, eps=-1e-5)"), (3, 26, 31)),
    (LAYER.format("RMSNorm(4, -1e-5)"), (3, 20, 25)),
    (COSINE.format("eps=-1e-5"), (4, 40, 45)),
])
def test_a_negative_eps_is_an_error_at_its_value(text, position):
    assert error(text) == (*position, "'eps' must be at least 0, got -1e-05")


def test_an_eps_of_zero_is_allowed():
    program = tiec.loads(LAYER.format("LayerNorm(4, eps=0)"), filename="m.tie")
    assert program.ir.models["M"].layers[0].config["eps"] == 0.0
    assert "eps=0" in program.python()


def test_coerce_checks_eps_and_floats_for_non_finite_values():
    span = Span(Source("m.tie", "x\n"), 1, 1, 1, 2)
    with pytest.raises(tiec.TieError) as info:
        coerce(CVal.literal(math.inf), "eps", span, "eps")
    assert info.value.message == "'eps' is inf: configuration values must be finite numbers"
    with pytest.raises(tiec.TieError) as info:
        coerce(CVal.literal(math.nan), "float", span, "p")
    assert info.value.message == "'p' is nan: configuration values must be finite numbers"
    with pytest.raises(tiec.TieError) as info:
        coerce(CVal.literal(True), "eps", span, "eps")
    assert info.value.message == "'eps' must be a number, got True"
    assert coerce(CVal.literal(2), "eps", span, "eps").value == 2.0
