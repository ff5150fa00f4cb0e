"""IR-level assertions on the good fixtures: value names, layer paths, types, share and tie
groups with orientation and λ, warnings, and parameter statistics computed by hand.

The parse-level and every-pass-verified checks of the same files are in `test_parse.py`.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from tiec.compiler import ir
from tiec.compiler.buffers import declared_buffers
from tiec.compiler.pipeline import compile_source
from tiec.compiler.stats import program_stats

GOOD = Path(__file__).resolve().parent / "fixtures" / "good"


def compiled(name: str, **overrides) -> ir.ProgramIR:
    path = GOOD / name
    return compile_source(path.read_text(), name, overrides)


def paths(program: ir.ProgramIR, model: str) -> list[str]:
    return [layer.path for layer in program.models[model].layers]


def types(program: ir.ProgramIR, model: str) -> dict[str, str]:
    return {k: str(v) for k, v in program.types[model].items()}


def groups(program: ir.ProgramIR) -> list[list[tuple[str, bool]]]:
    return [[(m.param, m.transposed) for m in g.members] for g in program.share_groups]


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


# ----------------------------------------------------------------------------- values and layers


def test_syntax_value_names_and_types():
    p = compiled("syntax.tie")
    g = p.models["Syntax"]
    assert [n.name for n in g.nodes] == ["fc", "h", "emb", "e", "mean", "t", "z"]
    assert [(o.name, o.value) for o in g.outputs] == [("z", "z"), ("t", "t")]
    t = types(p, "Syntax")
    assert (t["emb"], t["t"], t["z"], t["mask"]) == ("f32[B, T, 16]", "f32[B, 16]", "f32[B, 2, 8]", "bool[B, T]")
    reshape = g.nodes[-1]
    assert reshape.attrs["shape"] == (0, 2, -1)  # the symbol B became ONNX's "copy this dim"
    assert g.nodes[1].attrs["approximate"] == "tanh"


def test_config_expressions_and_defaults_from_earlier_params():
    p = compiled("config_exprs.tie")
    g = p.models["Config"]
    assert dict(g.config) == {"d": 12, "hidden": 32, "heads": 3, "scale": 0.5}
    assert dict(g.defaults) == dict(g.config)
    sizes = [(layer.config["in_features"], layer.config["out_features"]) for layer in g.layers]
    assert sizes == [(12, 32), (32, 4), (4, 12)]  # -(12 - 32) // 5 = 4; 12 / 3 * 3 = 12
    assert g.layer("mid").config_src["out_features"] == "-(d - hidden) // 5"
    consts = [n.attrs["value"] for n in g.nodes if n.op == "const"]
    assert consts == [0.5, 1]
    assert program_stats(p)["models"]["Config"]["logical_params"] == linear(12, 32) + linear(32, 4) + linear(4, 12)


def test_config_defaults_follow_an_override():
    p = compiled("config_exprs.tie", d=24)
    g = p.models["Config"]
    assert (g.config["hidden"], g.config["heads"]) == (56, 6)  # 2 * 24 + 8, 24 // 4
    assert g.defaults["hidden"] == 32  # as declared
    assert [layer.config["out_features"] for layer in g.layers] == [56, 6, 48]  # 32 // 5, 24 / 3 * 6
    assert str(p.types["Config"][g.outputs[0].value]) == "f32[B, 48]"


def test_block_parameter_defaults():
    p = compiled("block_defaults.tie")
    g = p.models["UsesDefaults"]
    sizes = {layer.path: (layer.config["in_features"], layer.config["out_features"]) for layer in g.layers}
    assert sizes == {"a.fc1": (8, 40), "a.fc2": (40, 8), "b.fc1": (8, 40), "b.fc2": (40, 2),
                     "c.fc1": (8, 10), "c.fc2": (10, 3)}
    assert [o.name for o in g.outputs] == ["output", "output_1"]
    assert types(p, "UsesDefaults")[g.outputs[1].value] == "f32[N, 3]"
    assert len(g.checks) == 3  # one declared-input check per block call


def test_nested_block_paths():
    p = compiled("nested_blocks.tie")
    assert paths(p, "Nested") == ["outer.inner.0.fc", "outer.inner.1.fc", "outer.inner.2.fc", "outer.proj"]
    names = [q.name for q in p.models["Nested"].params]
    assert names[:2] == ["outer.inner.0.fc.weight", "outer.inner.0.fc.bias"] and names[-1] == "outer.proj.weight"
    # SSA: `x = inner(x)` in the block's repeat binds x, x_1, x_2, x_3
    assert [n.name for n in p.models["Nested"].nodes if n.op == "tanh"] == ["x_1", "x_2", "x_3"]


def test_repeat_paths_and_indexed_share():
    p = compiled("repeats.tie")
    assert paths(p, "Repeats") == [f"blk.{i}.{s}" for i in range(4) for s in ("up", "down")] + ["same.up", "same.down"]
    calls = [n.attrs["layer"] for n in p.models["Repeats"].nodes if n.op == "Linear"]
    assert calls[-6:] == ["same.up", "same.down"] * 3  # one instance, three iterations
    assert groups(p) == [[("Repeats.blk.0.up.weight", False), ("Repeats.blk.3.up.weight", False)],
                         [("Repeats.blk.0.up.bias", False), ("Repeats.blk.3.up.bias", False)]]
    assert p.models["Repeats"].structural == frozenset({"n"})
    block = linear(4, 8) + linear(8, 4)  # 76
    stats = program_stats(p)["models"]["Repeats"]
    assert stats["logical_params"] == 4 * block + 3 * block
    assert stats["declared_params"] == 5 * block
    assert stats["unique_params"] == 5 * block - linear(4, 8)


def test_repeat_count_follows_an_override():
    p = compiled("repeats.tie", n=6)
    assert paths(p, "Repeats")[-4:] == ["blk.5.up", "blk.5.down", "same.up", "same.down"]
    assert groups(p)[0] == [("Repeats.blk.2.up.weight", False), ("Repeats.blk.3.up.weight", False)]  # blk[n - 4]


# ----------------------------------------------------------------------------- sharing and tying


def test_sharing_orientation_and_canonical():
    p = compiled("sharing.tie")
    assert groups(p) == [
        [("Enc.a.weight", False), ("Enc.b.weight", True), ("Enc.c.weight", True), ("Enc.twin.weight", False),
         ("Dec.out.weight", True)],
        [("Enc.a.bias", False), ("Enc.twin.bias", False)],
    ]
    enc = ir.bindings(p, "Enc")
    assert enc["c.weight"] == ir.Binding("a.weight", True, 1)
    assert enc["twin.bias"] == ir.Binding("a.bias", False, 2)
    dec = ir.bindings(p, "Dec")  # alone in its model, Dec.out.weight is unshared there
    assert dec["out.weight"] == ir.Binding("out.weight", False, None)
    assert ir.bindings(p)["Dec.out.weight"] == ir.Binding("Enc.a.weight", True, 1)


def test_sharing_stats():
    stats = program_stats(compiled("sharing.tie"))
    enc = stats["models"]["Enc"]
    # c(twin(x)) + b(a(x)): c 24, twin 24 + 4, b 24, a 24 + 4
    assert enc["logical_params"] == 104 and enc["declared_params"] == 104
    assert (enc["unique_params"], enc["tensors"]) == (24 + 4, 2)
    assert enc["share_groups"][0]["transposed"] == ["b.weight", "c.weight"]
    assert stats["program"]["unique_params"] == 24 + 4 + 6  # Dec.out.weight is Enc.a.weight.T
    assert stats["program"]["tensors"] == 3
    assert stats["share_groups"][0]["members"][-1] == "Dec.out.weight"


def test_block_internal_share_and_repeated_calls():
    p = compiled("block_sharing.tie")
    assert groups(p) == [[("BlockSharing.ae.enc.weight", False), ("BlockSharing.ae.dec.weight", True)]]
    calls = [n.attrs["layer"] for n in p.models["BlockSharing"].nodes if n.op == "Linear"]
    assert calls.count("tw.fc") == 4
    stats = program_stats(p)["models"]["BlockSharing"]
    assert stats["logical_params"] == linear(8, 3) + linear(3, 8) + 4 * 64
    assert stats["unique_params"] == linear(8, 3) + 8 + 64
    assert stats["declared_params"] == linear(8, 3) + linear(3, 8) + 64


def test_tie_groups():
    p = compiled("ties.tie")
    ties = [(t.id, t.strength, t.norm, [(m.param, m.transposed) for m in t.members]) for t in p.tie_groups]
    assert ties == [
        (1, 0.5, "l2", [("TieA.q.weight", False), ("TieA.p.weight", False)]),
        (2, 0.5, "l2", [("TieA.q.bias", False), ("TieA.p.bias", False)]),
        (3, 0.25, "l1", [("TieA.r.weight", False), ("TieA.p.weight", False)]),
        (4, 0.25, "l1", [("TieA.r.bias", False), ("TieA.p.bias", False)]),
        (5, 2.0, "l2", [("TieA.p.weight", False), ("TieA.q.weight", False), ("TieA.s.weight", True)]),
        (6, 0.125, "l1", [("TieA.p.weight", False), ("TieB.p.weight", False)]),
        (7, 0.125, "l1", [("TieA.p.bias", False), ("TieB.p.bias", False)]),
    ]
    assert p.share_groups == ()
    assert [t.id for t in ir.ties(p, "TieA")] == [1, 2, 3, 4, 5]  # the cross-model ties are not TieA's alone
    assert ir.ties(p, "TieA")[4].members[2].param == "s.weight"


def test_tie_strength_follows_a_model_parameter():
    p = compiled("ties.tie", lam=0.75)
    assert [t.strength for t in p.tie_groups[:2]] == [0.75, 0.75]


def test_warnings_unused_layer_and_ineffective_tie():
    p = compiled("warnings.tie")
    rendered = [w.render() for w in p.warnings]
    assert len(rendered) == 2
    assert rendered[0].startswith("warnings.tie:7:5: warning: layer 'spare' is declared but never used")
    assert rendered[1].startswith("warnings.tie:9:14: warning: tie between 'Warns.a.weight' and 'Warns.b.weight'")
    assert "drop" not in " ".join(rendered)


# ----------------------------------------------------------------------------- ops and layers


def test_every_op_and_its_shape():
    p = compiled("ops.tie")
    ops = {n.op for n in p.models["Ops"].nodes}
    from tiec.compiler.catalog import OP_SIGNATURES

    assert set(OP_SIGNATURES) | {"chunk", "split"} <= ops
    assert {"add", "sub", "mul", "div", "matmul", "neg", "const"} <= ops
    t = types(p, "Ops")
    assert (t["p"], t["q"], t["f"], t["g"]) == ("f32[N, 2, 4, 4]", "f32[N, 2, 2, 5]", "f32[N, 32]", "f32[N, 2, 10]")
    assert (t["t"], t["m"], t["c"], t["r"]) == ("f32[N, 6, 5]", "f32[N, 6, 1]", "f32[N, 6, 7]", "f32[N, 42]")
    assert (t["u"], t["sim"], t["pos"], t["prod"]) == ("f32[N, 94]", "f32[N]", "i64[5]", "f32[N, 5, 5]")
    assert (t["keep"], t["sel"], t["z"]) == ("bool[N, 5, 6]", "f32[N, 5, 6]", "f32[N, 5, 6]")
    assert (t["lo"], t["p2"], t["sl"], t["picked"], t["taken"]) == (
        "f32[N, 5, 3]", "f32[N, 5, 4]", "f32[N, 2, 3]", "f32[N, 5, 2]", "f32[N, 5, 4]")
    pool = next(n for n in p.models["Ops"].nodes if n.op == "max_pool2d")
    assert dict(pool.attrs) == {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}  # stride defaults to kernel


def test_every_layer_kind_and_its_parameters():
    p = compiled("layers.tie")
    g = p.models["Layers"]
    assert {layer.kind for layer in g.layers} == set(ir.LAYER_KINDS)
    shapes = {q.name: q.shape for q in g.params}
    assert shapes["attn.in_proj_weight"] == (24, 8) and shapes["attn.out_proj.bias"] == (8,)
    assert "attn_nobias.in_proj_bias" not in shapes and "rms.bias" not in shapes
    assert shapes["gain"] == (8,)  # a free parameter: its own key
    assert shapes["conv.weight"] == (4, 3, 3, 3) and shapes["conv2.weight"] == (2, 4, 3, 1)
    assert g.layer("attn").config["causal"] is True and g.layer("attn_nobias").config["num_heads"] == 4
    assert g.layer("drop").config["p"] == 0.1 and g.layer("rms").config["eps"] == 1e-6
    t = types(p, "Layers")
    assert (t["conv"], t["conv2"], t["h_1"]) == ("f32[B, 4, 5, 5]", "f32[B, 2, 3, 5]", "f32[B, T, 8]")
    stats = program_stats(p)["models"]["Layers"]
    expected = 50 * 8 + (24 * 8 + 24 + 64 + 8) + (24 * 8 + 64) + 16 + 8 + (108 + 4) + 24 + 64 + (8 * 16 + 16) \
        + (2 * 3 * 2 * 2 + 3) + 2 * 4 + 8  # bn2d's weight and bias (bn1d, affine=false, has none); gain
    assert t["deconv"] == "f32[B, 3, 6, 10]" and t["c1d"] == "f32[B, T, 16]" and t["bn1d"] == "f32[B, 8]"
    buffers = {b.name: b.shape for b in declared_buffers(p, "Layers")}  # running statistics: no parameters
    assert buffers == {"bn2d.running_mean": (4,), "bn2d.running_var": (4,), "bn2d.num_batches_tracked": (),
                       "bn1d.running_mean": (8,), "bn1d.running_var": (8,), "bn1d.num_batches_tracked": ()}
    assert g.layer("bn2d").config["momentum"] == 0.2 and g.layer("bn1d").config["affine"] is False
    assert dict(g.layer("rope").config) == {"head_dim": 8, "theta": 500.0} and t["rope_cos"] == "f32[T, 8]"
    assert [b.name for b in declared_buffers(p, "Layers", persistent_only=False)][-1] == "rope.inv_freq"
    assert stats["logical_params"] == stats["unique_params"] == expected
    conv, conv2 = stats["convolutions"]
    assert (conv["params"], conv["positions"], conv["locally_connected_params"]) == (112, 25, 2800)
    assert (conv2["params"], conv2["positions"], conv2["saving"]) == (24, 15, 15.0)


def test_parameter_references_count_as_uses():
    p = compiled("param_refs.tie")
    refs = [(n.name, n.attrs["param"], n.attrs["transposed"]) for n in p.models["ParamRefs"].nodes if n.op == "param"]
    assert refs == [("enc_weight", "enc.weight", False), ("enc_bias", "enc.bias", False),
                    ("enc_weight_1", "enc.weight", False), ("enc_weight_T", "enc.weight", True),
                    ("enc_bias_1", "enc.bias", False)]
    t = types(p, "ParamRefs")
    assert (t["enc_weight_T"], t["back"], t["again"]) == ("f32[4, 3]", "f32[B, 4]", "f32[B, 3]")
    stats = program_stats(p)["models"]["ParamRefs"]
    assert stats["logical_params"] == 15 + 12 + 3 + 12 + 12 + 3  # the call, then five references
    assert (stats["unique_params"], stats["logical_bytes"]) == (15, 4 * 57)


@pytest.mark.parametrize("name", ["syntax.tie", "ops.tie", "layers.tie"])
def test_inputs_keep_their_declared_types(name: str):
    p = compiled(name)
    for model, g in p.models.items():
        for i in g.inputs:
            assert p.types[model][i.name] == i.type


HOLDER = """
block Layer(d) {
    in x: [B, d]
    holder = Linear(d, d)
    fc = Linear(d, d)
    share fc.weight, holder.weight.T
    spare = Linear(d, d)
    return fc(x)
}
model M(d = 4) {
    in x: [B, d]
    repeat 12 {
        blk = Layer(d)
        x = blk(x)
    }
    return x
}
"""


def test_a_layer_holding_a_shared_tensor_is_used_and_copies_warn_once():
    from tiec.compiler import compile_source

    rendered = [w.render() for w in compile_source(HOLDER, "holder.tie").warnings]
    assert len(rendered) == 1, rendered  # not `holder`, which holds fc's weight; one line for 12 copies
    assert rendered[0].startswith("holder.tie:7:5: warning: layer 'blk.0.spare' is declared but never used, "
                                  "nor are its 11 other copies")
