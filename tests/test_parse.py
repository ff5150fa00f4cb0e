"""The front end and the pipeline over every good fixture and every example.

Each file is parsed, elaborated and run through every pass of `compiler.pipeline.PASSES`, with
`verify` after each; the AST of the fixtures is then checked in detail (spans as line:col,
references, annotations, repeats). IR-level assertions on the same fixtures are in
`test_fixture_ir.py`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tiec.compiler import ir
from tiec.compiler.pipeline import PASSES, compile_source
from tiec.compiler.toplevel import elaborate
from tiec.compiler.verify import verify
from tiec.dsl import ast, parse

ROOT = Path(__file__).resolve().parent.parent
GOOD = sorted((ROOT / "tests" / "fixtures" / "good").glob("*.tie"))
EXAMPLES = sorted((ROOT / "examples").glob("*.tie"))
WARNS = {"warnings.tie"}  # fixtures that exist to produce warnings


def compile_verified(path: Path):
    """Elaborate and run each pass by hand, verifying the IR after every step."""
    program = elaborate(parse(path.read_text(), str(path)))
    verify(program)
    for run in PASSES:
        program = run(program)
        verify(program)
    return program


def at(span) -> str:
    return f"{span.line}:{span.col}-{span.end_line}:{span.end_col}"


def load_ast(name: str) -> ast.Program:
    path = ROOT / "tests" / "fixtures" / "good" / name
    return parse(path.read_text(), name)


def body(program: ast.Program, name: str) -> dict:
    """A definition's statements, keyed by assigned/input name (others by position)."""
    d = next(d for d in program.definitions if d.name == name)
    return {getattr(s, "name", i): s for i, s in enumerate(d.body)}


def test_corpus_is_a_dozen_files():
    assert len(GOOD) >= 12
    assert len(EXAMPLES) >= 9


@pytest.mark.parametrize("path", GOOD + EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_compiles_and_verifies_after_every_pass(path: Path):
    program = compile_verified(path)
    assert program.models
    for name, graph in program.models.items():
        types = program.types[name]
        values = {v for n in ir.walk_nodes(graph.nodes) for v in (
            (*n.attrs["outputs"], n.attrs["slice"], *n.attrs["state"]) if n.op == "scan" else (n.name,))}
        assert set(types) == {i.name for i in graph.inputs} | values
        assert all(o.value in types for o in graph.outputs)
    # the pipeline's entry point gives the same IR, and compiling is deterministic
    again = compile_source(path.read_text(), str(path))
    assert replace(again, warnings=()) == replace(program, warnings=())
    assert [w.render() for w in again.warnings] == [w.render() for w in program.warnings]
    if path.name not in WARNS:
        assert program.warnings == ()


@pytest.mark.parametrize("path", GOOD + EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_span_lies_in_the_file(path: Path):
    program = compile_verified(path)
    lines = path.read_text().splitlines()
    for graph in program.models.values():
        spans = [n.span for n in graph.nodes] + [p.span for p in graph.params] + [i.span for i in graph.inputs]
        for span in spans:
            assert 1 <= span.line <= span.end_line <= len(lines)
            assert 1 <= span.col <= len(lines[span.line - 1])
            assert span.file == str(path)


# ----------------------------------------------------------------------------- syntax.tie


def test_syntax_definition_and_params():
    program = load_ast("syntax.tie")
    (d,) = program.definitions
    assert (d.kind, d.name, at(d.name_span)) == ("model", "Syntax", "4:7-4:13")
    (p,) = d.params
    assert (p.name, p.default.value, at(p.span)) == ("width", 16, "4:14-4:19")
    assert len(d.body) == 11  # comments, blank lines and `;;` leave no statements behind


def test_syntax_inputs_dtypes_and_symbols():
    stmts = body(load_ast("syntax.tie"), "Syntax")
    x, ids, mask = stmts["x"], stmts["ids"], stmts["mask"]
    assert (x.type.dtype, [type(d).__name__ for d in x.type.dims]) == ("f32", ["Name", "Num"])
    assert ids.type.dtype == "i64" and [d.id for d in ids.type.dims] == ["B", "T"]
    assert at(ids.span) == "5:25-5:38"  # the second statement on line 5, after `;`
    assert mask.type.dtype == "bool" and len(mask.type.dims) == 2  # trailing comma dropped


def test_syntax_multiline_call_spans_to_its_closing_paren():
    fc = body(load_ast("syntax.tie"), "Syntax")["fc"]
    call = fc.value
    assert call.func.id == "Linear"
    assert at(call.span) == "8:10-12:6"
    assert [a.span.line for a in call.args] == [9, 10]
    (kw,) = call.kwargs
    assert (kw.name, kw.value.id, at(kw.span)) == ("bias", "true", "11:9-11:20")
    assert at(fc.name_span) == "8:5-8:7"


def test_syntax_semicolon_separated_declarations_and_kwargs():
    stmts = body(load_ast("syntax.tie"), "Syntax")
    emb, norm = stmts["emb"], stmts["norm"]
    assert emb.span.line == norm.span.line == 13
    assert [k.name for k in emb.value.kwargs] == ["num", "dim"] and emb.value.args == ()
    assert at(norm.value.span) == "13:53-13:81"
    assert norm.value.kwargs[0].value.value == pytest.approx(1e-5)


def test_syntax_string_continuation_list_and_negation():
    stmts = body(load_ast("syntax.tie"), "Syntax")
    gelu = stmts["h"].value
    assert gelu.kwargs[0].value == ast.Str("tanh", gelu.kwargs[0].value.span)
    t = stmts["t"].value  # `mean(e, dim = 1) + \` continued on the next line
    assert isinstance(t, ast.BinOp) and t.op == "+" and (t.span.line, t.span.end_line) == (16, 17)
    shape = stmts["z"].value.args[1]
    assert isinstance(shape, ast.ListExpr) and at(shape.span) == "18:20-20:6"  # '[' … ']'
    neg = shape.items[2]
    assert isinstance(neg, ast.Neg) and neg.operand.value == 1 and at(neg.span) == "19:15-19:17"


def test_syntax_return_of_two_values():
    ret = body(load_ast("syntax.tie"), "Syntax")[10]
    assert isinstance(ret, ast.Return)
    assert [v.id for v in ret.values] == ["z", "t"] and at(ret.span) == "22:12-22:16"


# ----------------------------------------------------------------------------- expressions


def test_operator_precedence_and_associativity():
    (d,) = parse("model M(a = 1 - 2 - 3 * 4 // 2, b = -2 * 3) { in x: [1]\n return x }").definitions
    a, b = (p.default for p in d.params)
    assert a.op == "-" and a.left.op == "-" and a.right.op == "//" and a.right.left.op == "*"
    assert isinstance(b, ast.BinOp) and b.op == "*" and isinstance(b.left, ast.Neg)


def test_postfix_chain_spans():
    text = "model M {\n  in x: [2]\n  return f(x)[0].w(y, k=1)\n}\n"
    (ret,) = parse(text).definitions[0].body[1:]
    call = ret.values[0]
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attr) and call.func.name == "w"
    index = call.func.value
    assert isinstance(index, ast.Index) and index.index.value == 0 and at(index.span) == "3:10-3:17"
    assert at(call.span) == "3:10-3:27" and call.kwargs[0].name == "k"


def test_empty_call_and_parenthesised_expression():
    text = "model M {\n  in x: [2]\n  return (relu(x)) * (2 + 3) + f()\n}\n"
    value = parse(text).definitions[0].body[1].values[0]
    assert value.op == "+" and value.right.args == () and at(value.right.span) == "3:32-3:35"
    assert value.left.op == "*" and value.left.right.op == "+"


# ----------------------------------------------------------------------------- references


def test_indexed_reference_parts():
    program = load_ast("repeats.tie")
    share = next(s for s in body(program, "Repeats").values() if isinstance(s, ast.ShareStmt))
    first, second = share.refs
    assert first.parts[0] == "blk" and first.parts[1].value == 3 and first.parts[2] == "up"
    assert isinstance(second.parts[1], ast.BinOp) and second.parts[1].op == "-"
    assert at(first.span) == "20:11-20:20"


def test_repeat_statements():
    stmts = [s for s in body(load_ast("repeats.tie"), "Repeats").values() if isinstance(s, ast.Repeat)]
    plain, shared = stmts
    assert (plain.shared, plain.count.id, len(plain.body)) == (False, "n", 2)
    assert (shared.shared, shared.count.value) == (True, 3)
    assert at(plain.span) == "12:12-12:13"


def test_share_annotations_and_statements():
    program = load_ast("sharing.tie")
    stmts = body(program, "Enc")
    (b_ann,) = stmts["b"].annotations
    assert isinstance(b_ann, ast.ShareAnn) and b_ann.slot == "weight"
    assert b_ann.ref.parts == ("a", "weight", "T") and at(b_ann.span) == "6:40-6:59"
    (twin_ann,) = stmts["twin"].annotations
    assert twin_ann.slot is None and twin_ann.ref.parts == ("a",)
    inner = [s for s in stmts.values() if isinstance(s, ast.ShareStmt)]
    assert [r.parts for r in inner[0].refs] == [("b", "weight"), ("c", "weight")]
    (top,) = program.statements
    assert isinstance(top, ast.ShareStmt) and [r.parts for r in top.refs] == [("Enc", "c", "weight"),
                                                                            ("Dec", "out", "weight")]


def test_tie_annotations_and_statements():
    program = load_ast("ties.tie")
    stmts = body(program, "TieA")
    (q,), (r,) = stmts["q"].annotations, stmts["r"].annotations
    assert isinstance(q, ast.TieAnn) and (q.strength.id, q.norm, q.ref.parts) == ("lam", "l2", ("p",))
    assert (r.strength.value, r.norm) == (0.25, "l1")
    stmt = next(s for s in stmts.values() if isinstance(s, ast.TieStmt))
    assert (stmt.strength.value, stmt.norm, len(stmt.refs)) == (2, "l2", 3)  # norm="l2" as a string
    assert stmt.refs[2].parts == ("s", "weight", "T")
    (top,) = program.statements
    assert isinstance(top, ast.TieStmt) and (top.strength.value, top.norm) == (0.125, "l1")


def test_block_definitions_and_param_defaults():
    program = load_ast("block_defaults.tie")
    block, model = program.definitions
    assert (block.kind, model.kind) == ("block", "model")
    assert [p.name for p in block.params] == ["d", "hidden", "out"]
    assert block.params[0].default is None and block.params[1].default.op == "*"
    c = body(program, "UsesDefaults")["b"].value
    assert [k.name for k in c.kwargs] == ["out"]
