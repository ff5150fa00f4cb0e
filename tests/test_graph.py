"""`tiec graph`: the DOT text (clusters, share colours, transposed marks, dashed tie edges), its
escaping of every name and path, the SVG and PNG Graphviz renders from it, and the errors (an
unknown format, no Graphviz, too large a drawing) that leave no file behind."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from tiec.backends.graph import MAX_GRAPH_NODES, dot_source, quote

import tiec
from tests.fuzzing.valid import valid_specs
from tiec import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The renderer comes from a pip wheel that the project installs: every test runs it, none skips.

# The statements the writer emits, one per line: anything else means a label broke out of its quotes.
_STRING = r'"(?:[^"\\]|\\.)*"'
_VALUE = rf'(?:{_STRING}|[A-Za-z0-9_.#]+)'
_ATTRS = rf'\[(?:[a-z]+={_VALUE}(?:, )?)*\]'
_LINE = re.compile(rf'\s*(?:digraph tiec \{{|\}}|(?:graph|node|edge) {_ATTRS};|subgraph cluster_\w+ \{{'
                   rf'|label={_STRING}; style=rounded; color=gray\d+;|\w+ {_ATTRS};|[an]\d+ -> [an]\d+(?: {_ATTRS})?;)')
_ATTR = re.compile(rf'([a-z]+)=({_VALUE})')


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    return re.sub(r'\\(.)', lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])


def parse(dot: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, dict[str, str]]], list[tuple[str, list[str]]]]:
    """(node id → attributes, edges (a, b, attributes), clusters (label, node ids inside, nested
    ones too)) of the writer's DOT; fails on any line that is not one of its statements."""
    nodes, edges, clusters, stack = {}, [], [], []
    for line in dot.splitlines():
        assert _LINE.fullmatch(line), f"not a DOT statement of the writer: {line!r}"
        s = line.strip()
        if s.startswith("subgraph "):
            stack.append(["", []])
        elif s.startswith("label=") and stack:
            stack[-1][0] = _unquote(_ATTR.match(s).group(2))
        elif s == "}" and stack:
            label, ids = stack.pop()
            clusters.append((label, ids))
            if stack:
                stack[-1][1] += ids
        elif m := re.fullmatch(r'([an]\d+) -> ([an]\d+)(?: (\[.*\]))?;', s):
            edges.append((m.group(1), m.group(2), {k: _unquote(v) for k, v in _ATTR.findall(m.group(3) or "")}))
        elif (m := re.fullmatch(r'(\w+) (\[.*\]);', s)) and m.group(1) not in ("graph", "node", "edge"):
            nodes[m.group(1)] = {k: _unquote(v) for k, v in _ATTR.findall(m.group(2))}
            if stack:
                stack[-1][1].append(m.group(1))
    return nodes, edges, clusters


def _named(nodes: dict, first_line: str) -> list[str]:
    return [n for n, a in nodes.items() if a["label"].split("\n")[0] == first_line]


def test_siamese_draws_one_cluster_per_tower_call_with_the_towers_layers_in_one_colour_each():
    nodes, edges, clusters = parse(dot_source(tiec.load(EXAMPLES / "siamese.tie").ir))
    towers = [(label, ids) for label, ids in clusters if label.startswith("tower: Tower")]
    assert [label for label, _ in towers] == ["tower: Tower", "tower: Tower (call 2)"]
    colours = []
    for layer in ("tower.conv1", "tower.conv2", "tower.fc"):
        calls = _named(nodes, layer)
        assert len(calls) == 2 and all(any(c in ids for c in calls) for _, ids in towers)  # one in each call
        fills = {nodes[c]["fillcolor"] for c in calls}
        assert len(fills) == 1, f"{layer}: both calls use one tensor, so one colour"
        colours.append(fills.pop())
    assert len(set(colours)) == 3  # three layers, three tensor sets
    legend = dict(clusters)["share and tie groups"]
    assert sorted(nodes[n]["label"].split("\n")[1] for n in legend) == \
        ["Siamese.tower.conv1", "Siamese.tower.conv2", "Siamese.tower.fc"]
    (sim,) = _named(nodes, "cosine_similarity")
    assert {a for a, b, _ in edges if b == sim} == set(_named(nodes, "tower.fc"))


def test_tied_autoencoder_marks_the_decoder_as_the_encoders_weight_transposed():
    nodes, edges, clusters = parse(dot_source(tiec.load(EXAMPLES / "tied_autoencoder.tie").ir))
    (enc,), (dec,) = _named(nodes, "enc"), _named(nodes, "dec")
    assert nodes[enc]["fillcolor"] == nodes[dec]["fillcolor"]
    assert nodes[dec].get("peripheries") == "2" and "peripheries" not in nodes[enc]
    assert "weight.T: share #1" in nodes[dec]["label"] and "weight: share #1" in nodes[enc]["label"]
    assert "bias" not in nodes[dec]["label"]  # the decoder's bias is its own
    (legend,) = dict(clusters)["share and tie groups"]
    assert nodes[legend]["fillcolor"] == nodes[enc]["fillcolor"]
    assert nodes[legend]["label"] == "share #1 [256, 784]\nTiedAutoencoder.enc.weight, TiedAutoencoder.dec.weight.T"
    (relu,) = _named(nodes, "relu")
    assert (enc, relu, {}) in edges and (relu, dec, {}) in edges


def test_multitask_draws_the_tie_as_one_dashed_edge_labelled_with_lambda_and_the_shared_output_layer_striped():
    nodes, edges, clusters = parse(dot_source(tiec.load(EXAMPLES / "multitask.tie").ir))
    models = dict(clusters)
    fc1 = {m: next(n for n in _named(nodes, "fc1") if n in models[f"model {m}"]) for m in ("TaskA", "TaskB")}
    ties = [(a, b, attrs) for a, b, attrs in edges if attrs.get("style") == "dashed"]
    assert ties == [(fc1["TaskA"], fc1["TaskB"], {"style": "dashed", "dir": "none", "constraint": "false",
                                                   "color": "gray30", "label": "tie λ=0.01\nweight, bias"})]
    fc2 = _named(nodes, "fc2")
    assert len(fc2) == 2 and {nodes[n]["style"] for n in fc2} == {"striped"}
    assert len({nodes[n]["fillcolor"] for n in fc2}) == 1 and nodes[fc2[0]]["fillcolor"].count(":") == 1
    assert "weight: share #1\nbias: share #2" in nodes[fc2[0]]["label"]
    assert "fillcolor" not in nodes[fc1["TaskA"]]  # tied, not shared: two tensors
    legend = [nodes[n]["label"].split("\n")[0] for n in models["share and tie groups"]]
    assert sorted(legend) == ["share #1 [10, 256]", "share #2 [10]", "tie #1 λ=0.01 (l2)", "tie #2 λ=0.01 (l2)"]


def test_one_model_alone_keeps_its_members_of_cross_model_groups_and_drops_the_cross_model_tie():
    nodes, edges, clusters = parse(dot_source(tiec.load(EXAMPLES / "multitask.tie").ir, "TaskA"))
    assert [label for label, _ in clusters if label.startswith("model")] == ["model TaskA"]
    assert not [e for e in edges if e[2].get("style") == "dashed"]
    (fc2,) = _named(nodes, "fc2")
    assert nodes[fc2]["style"] == "striped"


def test_a_repeat_is_a_cluster_around_its_iterations():
    nodes, _, clusters = parse(dot_source(tiec.load(EXAMPLES / "deep_shared.tie", {"depth": 3}).ir))
    loops = {label: ids for label, ids in clusters if label.startswith("repeat")}
    assert set(loops) == {"repeat 3", "repeat 3 share"}
    assert sorted(nodes[n]["label"].split("\n")[0] for n in loops["repeat 3"] if "up" in nodes[n]["label"]) == \
        ["blk.0.up", "blk.1.up", "blk.2.up"]
    shared = [n for n in loops["repeat 3 share"] if nodes[n]["label"].startswith("blk.up")]
    assert len(shared) == 3 and len({nodes[n]["fillcolor"] for n in shared}) == 1


def test_quote_escapes_what_would_end_a_string_or_read_as_an_escape():
    assert quote('a"b') == r'"a\"b"'
    assert quote("c:\\new\\Node") == '"c:\\\\new\\\\Node"'  # not a line break, not the node's name
    assert quote("x\ny\r}") == '"x\ufffdy\ufffd}"'
    assert quote("\udcff") == '"?"'  # a lone surrogate (an undecodable file name byte)


HOSTILE = '''model graph {
    in node: [B, 4]
    edge = Linear(4, 4)
    subgraph = Linear(4, 4) share weight = edge.weight.T
    return subgraph(edge(node))
}
'''


def test_hostile_names_and_paths_stay_inside_their_labels(tmp_path):
    name = 'm"];\n n0 -> n0 [label="x\\N}\\'.replace("\n", "_")
    spec = tmp_path / f"{name}.tie"
    spec.write_text(HOSTILE)
    dot = dot_source(tiec.load(spec).ir, title=str(spec))
    nodes, edges, clusters = parse(dot)  # every line is one of the writer's statements
    assert [label for label, _ in clusters if label.startswith("model")] == ["model graph"]
    assert {nodes[n]["label"].split("\n")[0] for n in nodes} >= {"node", "edge", "subgraph"}
    assert len([e for e in edges if e[0] == e[1]]) == 0
    svg = ET.fromstring(tiec.backends.graph.render(dot, "svg"))
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert str(spec) in texts  # shown literally, backslashes and quotes included


def _svg_texts(data: bytes) -> list[str]:
    root = ET.fromstring(data)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.tie")))
def test_every_example_renders_to_svg_naming_every_layer_and_group(example, tmp_path):
    overrides = {"layers": 2} if example in ("albert.tie", "bert.tie", "gpt2_small.tie") else None
    program = tiec.load(EXAMPLES / example, overrides)
    out = tmp_path / "model.svg"
    assert cli.main(["graph", str(EXAMPLES / example), "-o", str(out)]
                    + [f"--set={k}={v}" for k, v in (overrides or {}).items()]) == 0
    texts = _svg_texts(out.read_bytes())
    for model in program.models:
        assert f"model {model}" in texts
        listed = {m for t in texts for m in t.split(", ")}  # share legends list their members
        for layer in program.ir.models[model].layers:
            # a free parameter read only through its share group (HF's alias predictions.bias) is
            # no node of the data flow, but its group's legend names it
            named = layer.path in texts or f"{model}.{layer.path}" in listed
            assert named, f"{model}: layer {layer.path} is not named in the drawing"
    for g in program.ir.share_groups:
        assert any(t.startswith(f"share #{g.id} ") for t in texts)
    for t in program.ir.tie_groups:
        assert any(x.startswith(f"tie #{t.id} λ=") for x in texts)


def test_png_is_a_png(tmp_path, capsys):
    out = tmp_path / "model.png"
    assert cli.main(["graph", str(EXAMPLES / "multitask.tie"), "-o", str(out), "--model", "TaskB"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out == f"wrote {out}\n"


def test_without_graphviz_svg_is_refused_with_a_hint_and_dot_text_still_works(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tiec.backends.graph.graphviz.layout_program", lambda: None)
    out = tmp_path / "model.svg"
    assert cli.main(["graph", str(EXAMPLES / "siamese.tie"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "needs Graphviz's `dot` program, which is not installed" in err and "-o model.dot" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    text = tmp_path / "model.dot"
    assert cli.main(["graph", str(EXAMPLES / "siamese.tie"), "-o", str(text)]) == 0
    parse(text.read_text(encoding="utf-8"))


def test_an_unknown_format_is_refused_before_compiling(tmp_path, capsys):
    bad = tmp_path / "bad.tie"
    bad.write_text("model M {")  # never compiled: the format is checked first
    assert cli.main(["graph", str(bad), "-o", str(tmp_path / "m.jpg")]) == 1
    err = capsys.readouterr().err
    assert "cannot tell the drawing's format" in err and "name it .svg, .png or .dot" in err
    assert cli.main(["graph", str(EXAMPLES / "siamese.tie"), "-o", str(tmp_path / "m.txt"), "--format", "dot"]) == 0
    parse((tmp_path / "m.txt").read_text(encoding="utf-8"))


def test_a_drawing_over_the_node_limit_is_refused_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "deep.tie"
    spec.write_text(f"model M(n = {MAX_GRAPH_NODES}) {{\n    in x: [B, 4]\n    repeat n share {{\n"
                    "        f = Linear(4, 4)\n        x = relu(f(x))\n    }\n    return x\n}\n")
    out = tmp_path / "m.dot"
    assert cli.main(["graph", str(spec), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"over {MAX_GRAPH_NODES:,} nodes" in err and "--model" in err
    assert not out.exists()


def test_the_python_api_returns_the_dot_text_and_writes_the_drawing(tmp_path):
    program = tiec.load(EXAMPLES / "tied_autoencoder.tie")
    text = program.graph()
    assert text == dot_source(program.ir, title=str(EXAMPLES / "tied_autoencoder.tie"))
    out = tmp_path / "m.dot"
    assert program.graph(out, model="TiedAutoencoder") == out.read_text(encoding="utf-8")
    assert "(TiedAutoencoder)" in out.read_text(encoding="utf-8")  # the caption names the model drawn


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=valid_specs())
def test_every_valid_spec_draws_with_every_layer_and_group_named(spec):
    program = tiec.loads(spec.text)
    nodes, _, clusters = parse(dot_source(program.ir))
    first_lines = {a["label"].split("\n")[0] for a in nodes.values()}
    for model in program.models:
        assert f"model {model}" in dict(clusters)
        assert {layer.path for layer in program.ir.models[model].layers} <= first_lines | _unused(program, model)
    legend = " ".join(nodes[n]["label"] for n in dict(clusters).get("share and tie groups", []))
    for g in program.ir.share_groups:
        assert f"share #{g.id} " in legend
    for t in program.ir.tie_groups:
        assert f"tie #{t.id} " in legend


def _unused(program, model: str) -> set[str]:
    """Layers no node calls (declared, never run): they have no node to draw."""
    graph = program.ir.models[model]
    called = {n.attrs["layer"] for n in graph.nodes if "layer" in n.attrs}
    params = graph.param_map()
    read = {params[n.attrs["param"]].layer for n in graph.nodes if n.op == "param"}
    return {layer.path for layer in graph.layers} - called - read


def test_a_layer_called_through_its_block_instance_is_that_layer():
    program = tiec.loads("block T {\n    in x: [B, 4]\n    fc = Linear(4, 4)\n    return fc(x)\n}\n"
                         "model M {\n    in x: [B, 4]\n    t = T()\n    return t.fc(t(x))\n}\n")
    nodes, edges, clusters = parse(dot_source(program.ir))
    calls = _named(nodes, "t.fc")
    assert len(calls) == 2 and len({nodes[n]["fillcolor"] for n in calls}) == 1
    inside, outside = (calls if calls[0] in dict(clusters)["t: T"] else calls[::-1])
    assert outside not in dict(clusters)["t: T"] and (inside, outside, {}) in edges


def test_centroid_ties_are_named_and_anchors_are_fixed_nodes_with_their_keys():
    program = tiec.loads('model M(lam = 0.5) {\n    in x: [B, 4]\n    a = Linear(4, 4)\n    b = Linear(4, 4)\n'
                         '    c = Linear(4, 4)\n    enc = Linear(4, 4) tie(lam) anchor("p}]; n0 -> n0 [\\N")\n'
                         '    tie(0.1, centroid) a, b, c\n    return enc(c(b(a(x))))\n}\n')
    nodes, edges, clusters = parse(dot_source(program.ir))
    (a,), (b,), (c,), (enc,) = (_named(nodes, n) for n in ("a", "b", "c", "enc"))
    ties = {(x, y): attrs["label"] for x, y, attrs in edges if attrs.get("style") == "dashed"}
    assert ties[(a, b)] == ties[(a, c)] == "tie λ=0.1 centroid\nweight, bias"
    (anchor,) = [n for n, attrs in nodes.items() if attrs.get("shape") == "cylinder"]
    assert nodes[anchor]["label"] == "anchor (fixed)\np}]; n0 -> n0 [\\N.weight, p}]; n0 -> n0 [\\N.bias"  # as written
    assert ties[(enc, anchor)] == "tie λ=0.5\nweight, bias"
    legend = [nodes[n]["label"] for n in dict(clusters)["share and tie groups"]]
    assert 'tie #1 λ=0.5 (l2)\nM.enc.weight, anchor("p}]; n0 -> n0 [\\N.weight")' in legend
    assert "tie #3 λ=0.1 (l2, centroid)\nM.a.weight, M.b.weight, M.c.weight" in legend
    texts = _svg_texts(tiec.backends.graph.render(dot_source(program.ir), "svg"))  # the key as written: no
    assert "p}]; n0 -> n0 [\\N.weight, p}]; n0 -> n0 [\\N.bias" in texts  # `\N` read as the node's name
