"""Small hand-built IR tests of the sharing pass, `ir.bindings`, `verify` and the stats pass.

No parser: each test builds a `ProgramIR` from Linear layers and share/tie requests, runs one
pass and checks its rule (see each pass's module docstring). Shape rules are in
`test_shape_rules.py`.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
from tiec.compiler import ir, shapes, sharing
from tiec.compiler.ir import frozen
from tiec.compiler.stats import model_stats, program_stats
from tiec.compiler.verify import IRInvariantError, verify
from tiec.dsl.diagnostics import Source, Span, TieError

SRC = Source("hand.tie", "\n".join(f"line {i}" for i in range(1, 40)))


def at(line: int) -> Span:
    return Span(SRC, line, 1, line, 5)


def linear(path: str, n_in: int, n_out: int, bias: bool = True, line: int = 1):
    layer = ir.Layer(path, "Linear", frozen({"in_features": n_in, "out_features": n_out, "bias": bias}), at(line))
    params = [ir.Param(f"{path}.weight", path, "weight", (n_out, n_in), "f32", at(line))]
    if bias:
        params.append(ir.Param(f"{path}.bias", path, "bias", (n_out,), "f32", at(line)))
    return layer, params


def node(op: str, name: str, *inputs: str, **attrs) -> ir.Node:
    return ir.Node(op, name, inputs, frozen(attrs), at(30))


def graph(name: str, *layers, nodes=(), inputs=(("x", (2, 4)),), outputs=None) -> ir.Graph:
    nodes = tuple(nodes)
    ins = tuple(ir.Input(n, ir.TensorType("f32", shape), at(20)) for n, shape in inputs)
    last = nodes[-1].name if nodes else ins[0].name
    outs = tuple(ir.Output(o, o, at(31)) for o in (outputs or [last]))
    return ir.Graph(name, frozen(), frozen(), ins, tuple(layer for layer, _ in layers),
                    tuple(p for _, ps in layers for p in ps), nodes, outs, at(1))


def share(a: str, b: str, transposed: bool = False, line: int = 10) -> ir.ShareRequest:
    return ir.ShareRequest(a, b, transposed, at(line), at(line), at(line))


def program(*graphs: ir.Graph, shares=(), ties=()) -> ir.ProgramIR:
    return ir.ProgramIR(SRC, frozen({g.name: g for g in graphs}), tuple(shares), tuple(ties))


def square_model(name: str = "M", n: int = 3, size: int = 4) -> ir.Graph:
    """Layers l0 … l{n-1}, each Linear(size, size), declared in that order."""
    return graph(name, *(linear(f"l{i}", size, size, line=i + 1) for i in range(n)))


def members(p: ir.ProgramIR) -> list[list[tuple[str, bool]]]:
    return [[(m.param, m.transposed) for m in g.members] for g in p.share_groups]


# ----------------------------------------------------------------------------- sharing


def test_transitive_orientation():
    # a = b.T and b = c  ⇒  a = c.T
    p = sharing.run(program(square_model(), shares=[share("M.l0.weight", "M.l1.weight", True),
                                                    share("M.l1.weight", "M.l2.weight")]))
    verify(p)
    assert members(p) == [[("M.l0.weight", False), ("M.l1.weight", True), ("M.l2.weight", True)]]
    assert ir.bindings(p)["M.l2.weight"] == ir.Binding("M.l0.weight", True, 1)


def test_transposed_twice_is_plain():
    p = sharing.run(program(square_model(), shares=[share("M.l0.weight", "M.l1.weight", True),
                                                    share("M.l1.weight", "M.l2.weight", True)]))
    assert members(p) == [[("M.l0.weight", False), ("M.l1.weight", True), ("M.l2.weight", False)]]


def test_canonical_is_first_in_source_order_not_request_order():
    p = sharing.run(program(square_model(n=4), shares=[share("M.l3.weight", "M.l2.weight", True),
                                                       share("M.l2.weight", "M.l1.weight")]))
    # l1 is declared first: it is canonical, and orientations are relative to it
    assert members(p) == [[("M.l1.weight", False), ("M.l2.weight", False), ("M.l3.weight", True)]]
    assert all(not g.members[0].transposed for g in p.share_groups)


def test_groups_are_numbered_by_their_canonical_and_unrequested_slots_stay_out():
    p = sharing.run(program(square_model(n=4), shares=[share("M.l3.bias", "M.l2.bias"),
                                                       share("M.l1.weight", "M.l0.weight")]))
    assert [(g.id, g.members[0].param) for g in p.share_groups] == [(1, "M.l0.weight"), (2, "M.l2.bias")]
    assert ir.bindings(p)["M.l3.weight"] == ir.Binding("M.l3.weight", False, None)


def test_contradictory_orientation_cycle():
    requests = [share("M.l0.weight", "M.l1.weight", True, line=10), share("M.l1.weight", "M.l2.weight", line=11),
                share("M.l2.weight", "M.l0.weight", line=12)]
    with pytest.raises(TieError) as info:
        sharing.run(program(square_model(), shares=requests))
    assert info.value.message.startswith("contradictory sharing")
    assert len(info.value.notes) == 2


def test_same_pair_both_orientations():
    requests = [share("M.l0.weight", "M.l1.weight", line=10), share("M.l1.weight", "M.l0.weight", True, line=11)]
    with pytest.raises(TieError, match="both transposed and not") as info:
        sharing.run(program(square_model(n=2), shares=requests))
    assert info.value.span.line == 11 and info.value.notes[0][0].line == 10


def test_repeated_request_is_harmless():
    requests = [share("M.l0.weight", "M.l1.weight"), share("M.l0.weight", "M.l1.weight")]
    assert members(sharing.run(program(square_model(n=2), shares=requests))) == [
        [("M.l0.weight", False), ("M.l1.weight", False)]]


def test_shape_mismatch_reports_both_declarations():
    g = graph("M", linear("a", 4, 8, line=2), linear("b", 4, 6, line=3))
    with pytest.raises(TieError) as info:
        sharing.run(program(g, shares=[share("M.a.weight", "M.b.weight", line=10)]))
    e = info.value
    assert e.message == "cannot share 'M.b.weight' [6, 4] with 'M.a.weight' [8, 4]: shapes differ"
    assert [n[0].line for n in e.notes] == [3, 2]


def test_transposed_view_fixes_the_shape():
    g = graph("M", linear("a", 4, 8), linear("b", 8, 4))
    p = sharing.run(program(g, shares=[share("M.b.weight", "M.a.weight", True)]))
    assert members(p) == [[("M.a.weight", False), ("M.b.weight", True)]]


def test_independent_errors_are_reported_together():
    g = graph("M", linear("a", 4, 8), linear("b", 4, 6), linear("c", 2, 3), linear("d", 2, 5))
    with pytest.raises(TieError) as info:
        sharing.run(program(g, shares=[share("M.a.weight", "M.b.weight"), share("M.c.weight", "M.d.weight")]))
    assert len(info.value.errors) == 2


def test_cross_model_group_restricted_per_model():
    one, two = square_model("One", n=1), square_model("Two", n=2)
    requests = [share("One.l0.weight", "Two.l0.weight", True), share("Two.l1.weight", "One.l0.weight")]
    p = sharing.run(program(one, two, shares=requests))
    assert members(p) == [[("One.l0.weight", False), ("Two.l0.weight", True), ("Two.l1.weight", False)]]
    # within Two, l0 is canonical (re-picked) and l1 is l0 transposed
    assert ir.bindings(p, "Two")["l1.weight"] == ir.Binding("l0.weight", True, 1)
    assert ir.bindings(p, "Two")["l0.weight"] == ir.Binding("l0.weight", False, 1)
    # alone in One, its slot is unshared there
    assert ir.bindings(p, "One")["l0.weight"] == ir.Binding("l0.weight", False, None)
    assert ir.bindings(p)["Two.l1.weight"] == ir.Binding("One.l0.weight", False, 1)
    stats = program_stats(p)
    assert stats["models"]["Two"]["unique_params"] == 16 + 4 + 4
    assert stats["program"]["unique_params"] == 16 + 3 * 4


# ----------------------------------------------------------------------------- ties


def tie(*params: str, strength: float = 0.1, transposed=()) -> ir.TieRequest:
    return ir.TieRequest(strength, "l2", tuple(ir.Member(q, q in transposed, at(15)) for q in params), at(15))


def test_ties_keep_members_and_check_shapes():
    g = graph("M", linear("a", 4, 8), linear("b", 8, 4))
    p = sharing.run(program(g, ties=[tie("M.a.weight", "M.b.weight", transposed={"M.b.weight"})]))
    (t,) = p.tie_groups
    assert (t.id, t.strength, [m.transposed for m in t.members]) == (1, 0.1, [False, True])
    with pytest.raises(TieError, match=r"cannot tie 'M.b.weight' \[4, 8\] to 'M.a.weight' \[8, 4\]"):
        sharing.run(program(g, ties=[tie("M.a.weight", "M.b.weight")]))


def test_tie_within_one_shared_tensor_warns():
    p = sharing.run(program(square_model(n=2), shares=[share("M.l0.weight", "M.l1.weight")],
                            ties=[tie("M.l0.weight", "M.l1.weight")]))
    assert len(p.tie_groups) == 1 and len(p.warnings) == 1
    assert "has no effect" in p.warnings[0].message
    # tied to its transpose, the shared tensor is a real penalty (W vs Wᵀ): no warning
    p = sharing.run(program(square_model(n=2), shares=[share("M.l0.weight", "M.l1.weight")],
                            ties=[tie("M.l0.weight", "M.l1.weight", transposed={"M.l1.weight"})]))
    assert p.warnings == ()


# ----------------------------------------------------------------------------- verify


def test_verify_accepts_pass_output_and_rejects_broken_groups():
    p = sharing.run(program(square_model(), shares=[share("M.l0.weight", "M.l1.weight", True)]))
    verify(p)
    (g,) = p.share_groups
    flipped = replace(g, members=tuple(replace(m, transposed=not m.transposed) for m in g.members))
    with pytest.raises(IRInvariantError, match="canonical member is transposed"):
        verify(replace(p, share_groups=(flipped,)))
    with pytest.raises(IRInvariantError, match="in two share groups"):
        verify(replace(p, share_groups=(g, replace(g, id=2))))


def test_verify_rejects_bad_graphs():
    good = graph("M", linear("a", 4, 4), nodes=[node("Linear", "h", "x", layer="a")])
    verify(program(good))
    cases = {
        "before definition": [node("relu", "h", "y")],
        "defined twice": [node("relu", "h", "x"), node("relu", "h", "x")],
        "lacks attribute": [node("softmax", "h", "x")],
        "unknown layer": [node("Linear", "h", "x", layer="zz")],
        "unknown parameter": [node("param", "h", param="a.zz", transposed=False)],
    }
    for message, nodes in cases.items():
        with pytest.raises(IRInvariantError, match=message):
            verify(program(replace(good, nodes=tuple(nodes))))
    with pytest.raises(IRInvariantError, match="no type"):
        verify(replace(program(good), types=frozen({"M": frozen({"x": ir.TensorType("f32", (2, 4))})})))


def test_ir_nodes_are_a_closed_set():
    with pytest.raises(ValueError, match="unknown op"):
        node("softplus", "h", "x")
    with pytest.raises(ValueError, match="unknown layer kind"):
        ir.Layer("a", "GRU", frozen(), at(1))


# ----------------------------------------------------------------------------- stats


def typed(p: ir.ProgramIR) -> ir.ProgramIR:
    return shapes.run(sharing.run(p))


def test_a_layer_called_twice_counts_twice():
    g = graph("M", linear("a", 4, 4), nodes=[node("Linear", "h", "x", layer="a"), node("Linear", "y", "h", layer="a")])
    s = model_stats(typed(program(g)), "M")
    assert (s["logical_params"], s["unique_params"], s["declared_params"]) == (40, 20, 20)
    assert (s["logical_bytes"], s["unique_bytes"], s["tensors"]) == (160, 80, 2)


def test_repeat_iterations_and_parameter_references_count():
    calls = [node("Linear", f"h{i}", "x" if i == 0 else f"h{i - 1}", layer="a") for i in range(3)]
    refs = [node("param", "w", param="a.weight", transposed=True), node("matmul", "y", "h2", "w"),
            node("param", "b", param="a.bias", transposed=False), node("add", "z", "y", "b")]
    g = graph("M", linear("a", 4, 4), nodes=calls + refs)
    s = model_stats(typed(program(g)), "M")
    assert s["logical_params"] == 3 * 20 + 16 + 4
    assert s["unique_params"] == 20 and s["nodes"] == 7


def test_unused_layers_count_as_declared_not_logical():
    g = graph("M", linear("a", 4, 4), linear("spare", 4, 2), nodes=[node("Linear", "h", "x", layer="a")])
    s = model_stats(typed(program(g)), "M")
    assert (s["logical_params"], s["unique_params"], s["declared_params"]) == (20, 30, 30)


def test_sharing_reduces_unique_not_logical():
    g = graph("M", linear("a", 4, 8), linear("b", 8, 4),
              nodes=[node("Linear", "h", "x", layer="a"), node("Linear", "y", "h", layer="b")])
    p = typed(program(g, shares=[share("M.b.weight", "M.a.weight", True)]))
    s = model_stats(p, "M")
    assert (s["logical_params"], s["unique_params"], s["tensors"]) == (40 + 36, 40 + 4, 3)
    assert s["share_groups"] == [{"canonical": "a.weight", "members": ["a.weight", "b.weight"],
                                  "transposed": ["b.weight"], "shape": [8, 4], "numel": 32}]


def test_bytes_follow_the_dtype():
    layer, params = linear("a", 4, 4)
    params = [replace(q, dtype="f16") for q in params]
    g = graph("M", (layer, params), nodes=[node("Linear", "h", "x", layer="a")])
    s = model_stats(program(g), "M")
    assert (s["logical_bytes"], s["unique_bytes"]) == (40, 40)


def conv_graph(h: int | str, w: int | str) -> ir.Graph:
    config = {"in_channels": 4, "out_channels": 4, "kernel_size": (3, 3), "stride": (1, 1), "padding": (1, 1),
              "bias": True}
    layer = ir.Layer("conv", "Conv2d", frozen(config), at(2))
    params = [ir.Param("conv.weight", "conv", "weight", (4, 4, 3, 3), "f32", at(2)),
              ir.Param("conv.bias", "conv", "bias", (4,), "f32", at(2))]
    calls = [node("Conv2d", "c", "x", layer="conv"), node("relu", "r", "c"), node("Conv2d", "y", "r", layer="conv")]
    return graph("M", (layer, params), nodes=calls, inputs=(("x", ("N", 4, h, w)),))


def test_convolution_locally_connected_figures():
    s = model_stats(typed(program(conv_graph(5, 6))), "M")
    (conv,) = s["convolutions"]  # one entry per layer, though it is called twice
    per_position = 4 * 4 * 3 * 3 + 4  # 148
    assert conv == {"layer": "conv", "input": ["N", 4, 5, 6], "output": ["N", 4, 5, 6], "params": per_position,
                    "positions": 30, "locally_connected_params": 30 * per_position, "saving": 30.0}
    assert s["logical_params"] == 2 * per_position


def test_convolution_figures_with_symbolic_sizes():
    (conv,) = model_stats(typed(program(conv_graph("H", 6))), "M")["convolutions"]
    assert conv["output"] == ["N", 4, "(H+2-3)//1+1", 6]
    assert (conv["positions"], conv["locally_connected_params"], conv["saving"]) == (None, None, None)


def test_every_table_has_one_row_per_registered_op():
    from tiec.backends.onnx.ops import ONNX_EMIT
    from tiec.backends.torch.emit_table import TORCH_EMIT, TORCH_LAYER
    from tiec.compiler import catalog, ir
    from tiec.compiler.shapes import SHAPE_RULES

    ops, layers = set(catalog.FUNCTION_OPS), set(catalog.LAYERS)
    assert set(ir.FUNCTION_OPS) == ops and set(ir.LAYER_KINDS) == layers
    for table in (SHAPE_RULES, TORCH_EMIT, ONNX_EMIT):
        assert set(table) == ops | layers
    assert set(TORCH_LAYER) == layers
    with pytest.raises(AssertionError, match=r"rows missing for \['gelu'\]"):
        catalog.check_table("T", {k: v for k, v in TORCH_EMIT.items() if k != "gelu"})


def test_the_language_reserves_every_name_a_torch_module_has():
    from tiec.compiler.catalog import reserved_member
    from torch import nn

    assert {n for n in dir(nn.Module()) if not reserved_member(n)} == set()
