"""The benchmark machinery at tiny sizes: every benchmark produces its figures, and the ones that
are exact (memory, the tie penalty's value, reference outputs) are right. No timing assertions:
ratios measured in a few milliseconds mean nothing; `make bench` measures them.
"""
from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
MODULES = ("common", "references", "onnx_size", "memory", "tie_penalty", "compile_scaling", "structure", "forward", "gpu",
           "run")


@pytest.fixture(scope="module")
def bench():
    """The benchmark modules, imported as the scripts import them (bare names from benchmarks/),
    then removed from `sys.modules` so no other test sees their generic names."""
    saved = {name: sys.modules.pop(name) for name in MODULES if name in sys.modules}
    sys.path.insert(0, str(BENCH))
    try:
        mods = {name: importlib.import_module(name) for name in MODULES}
        yield type("Bench", (), mods)
    finally:
        sys.path.remove(str(BENCH))
        for name in MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def finite(figure) -> bool:
    return figure.error is None and figure.value is not None and math.isfinite(figure.value) and figure.value > 0


def test_common_pairs_tables_and_json(bench, tmp_path, capsys):
    calls = []
    times = bench.common.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3,
                                    warmup=1, per_round={"b": 2})
    assert calls == ["a", "b", "a", "b", "b", "b", "b", "a", "a", "b", "b"]  # warm-up, then ABBA rounds
    assert len(times["a"]) == 3 and len(times["b"]) == 6
    pair = bench.common.Pair([2.0, 4.0, 3.0], [1.0, 2.0, 1.5])
    assert pair.ratio == 0.5 and pair.paired_ratio == 0.5
    figs = [bench.common.Figure("x", 0.5, 1.0, "<="), bench.common.Figure("y", 2.0, 1.0, ">="),
            bench.common.failure("z", ValueError("broke\nsecond line"), 1.0)]
    assert [f.met for f in figs] == [True, True, False] and figs[2].error == "ValueError: broke"
    bench.common.print_table("t", figs)
    assert "FAILED: ValueError: broke" in capsys.readouterr().out
    path = bench.common.write_json("t", figs, {"quick": True}, directory=tmp_path)
    data = json.loads(path.read_text())
    assert [f["met"] for f in data["figures"]] == [True, True, False] and "environment" in data


def test_run_writes_memory_figures_equal_to_stats(bench, tmp_path):
    assert bench.run.main(["--quick", "--only", "memory", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "memory.json").read_text())
    figures = data["figures"]
    assert {f["name"].split(".")[0].split(" ")[0] for f in figures} >= {"albert", "gpt2_small", "tied_lm", "siamese"}
    for f in figures:
        assert f["error"] is None and f["met"] is True, f
        assert f["details"]["module_bytes"] == f["details"]["stats_unique_bytes"]
    assert data["programs"]["tied_lm.TiedLM"]["state_dict_bytes"] > data["programs"]["tied_lm.TiedLM"]["module_bytes"]


def test_compile_scaling_tiny(bench):
    from tiec.compiler import compile_source

    program = compile_source(bench.compile_scaling.chain_spec(250, per_model=100, share_every=8))
    assert len(program.models) == 3 and sum(len(g.layers) for g in program.models.values()) == 250
    assert len(program.share_groups) == 12 + 12 + 6
    assert bench.compile_scaling.bare_parser().parse(bench.compile_scaling.chain_spec(20)).data == "start"
    figures, _ = bench.compile_scaling.run(sizes=(20, 60), torch_sizes=(20, 40), rounds=1, torch_rounds=1)
    names = [f.name for f in figures]
    assert names[:2] == ["compile / bare parse @ 20 layers", "compile / bare parse @ 60 layers"]
    assert any("to nn.Module" in n for n in names)
    assert all(finite(f) for f in figures), figures
    assert "growth_without_gc" in figures[2].details


def test_tie_penalty_values_agree(bench):
    figures, extra = bench.tie_penalty.run(copies=5, n=16, rounds=1)
    values = extra["values"]
    assert values["rel_diff"] <= 1e-4 and abs(values["compiled"] - values["float64"]) <= 1e-4 * values["float64"]
    assert finite(figures[0]) and figures[0].direction == ">="


def test_forward_reference_matches_and_times(bench):
    small = {"vocab": 500, "e": 16, "d": 32, "heads": 2, "ffn": 64, "layers": 2}
    figures, extra = bench.forward.run(batch=2, seq=8, rounds=(1, 1), overrides=small)
    assert extra["max_abs_diff"] <= 1e-3
    assert len(figures) == 2 and all(finite(f) for f in figures)


@pytest.mark.parametrize("name", ["tied_autoencoder", "siamese"])
def test_onnx_size_tiec_and_torchscript(bench, tmp_path, name):
    figures, details = bench.onnx_size.measure(name, None, tmp_path, exporters=("torch torchscript",))
    tiec_fig = figures[0]
    assert tiec_fig.name == f"{name}: tiec" and 1.0 <= tiec_fig.value < 1.01
    assert details["tiec"]["onnxruntime_max_abs_diff"] < 1e-4
    assert len(figures) == 2 and (finite(figures[1]) or figures[1].error)
    assert not any(tmp_path.iterdir())  # exports are deleted


def test_references_load_strictly_and_match(bench):
    for name, overrides in (("gpt2_small", {"layers": 1, "vocab": 100, "context": 16, "d": 32, "heads": 2}),
                            ("tied_autoencoder", None), ("siamese", None)):
        program, compiled = bench.references.load_compiled(name, overrides)
        bench.references.reference_for(name, program, compiled)  # strict load + same outputs


def test_gpu_script_sharing_checks_on_cpu(bench):
    import torch

    figures = bench.gpu.sharing_figures(torch.device("cpu"))
    assert figures and all(f.met for f in figures), [f for f in figures if not f.met]
    gpt2 = next(f for f in figures if f.name.startswith("gpt2_small"))
    assert any(len(g) == 2 for g in gpt2.details["groups_after"])  # lm_head.weight is wte.weight


def test_structure_emits_as_many_lines_at_any_depth(bench):
    figures = bench.structure._case("gpt2_small.tie", rounds=1)
    assert [f.name for f in figures] == ["gpt2_small.tie: source at 96 layers / at 12",
                                         "gpt2_small.tie: emitted lines at 96 / at 12"]
    assert finite(figures[0]) and figures[1].value == 1.0 and figures[1].met is True
