"""The ONNX checker's verdict on a built model, as a `TieError` pointing at the spec.

`onnx.checker.check_model(full_check=True)` (structure, then strict shape inference) raises its
own exception types and names the node it rejects by the node's name; ours are unnamed, which
keeps files small. So on a failure the check runs once more with each node named by its index,
and that index leads back, through `GraphBuilder.origins`, to the IR node it was lowered from.
Failing that, a quoted IR value, parameter or output name in the message is blamed; failing that,
the model. Users then see `file:line:col: error: …` like every other diagnostic, never onnx's
exception types.
"""
from __future__ import annotations

import re

import onnx
from tiec.dsl.diagnostics import Span, TieError

from .builder import GraphBuilder

ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)
_TAG = "tiec#"  # cannot be an IR value (a Python identifier) or a parameter (a dotted state-dict key)


def check(proto: onnx.ModelProto, data: bytes, b: GraphBuilder) -> None:
    """Run the full ONNX check on `data` (the serialised `proto`, built by `b`).

    Raises:
        TieError: at the IR node most likely responsible (else the model), naming it and the
            checker's complaint.
    """
    try:
        onnx.checker.check_model(skeleton(proto) if len(data) > SKELETON_FROM else data, full_check=True)
    except ERRORS as e:
        raise rejection(proto, b, e) from e


SKELETON_FROM = 64 * 2**20  # bytes of a model above which the check reads its skeleton
_LARGE = 2**20  # an initializer this big becomes a typed graph input of the skeleton


def skeleton(proto: onnx.ModelProto, absent: tuple = ()) -> bytes:
    """`proto` serialised with each large initializer replaced by a graph input of its type and
    shape: the graph, its types and shape inference check the same, while the checker no longer
    parses the weights' bytes (tiec wrote them itself, one `fill_tensor` each, sized from the IR).
    `absent`: (name, onnx data type, dims) of initializers `proto` leaves out, typed inputs too."""
    out = onnx.ModelProto(ir_version=proto.ir_version, producer_name=proto.producer_name)
    out.opset_import.extend(proto.opset_import)
    out.metadata_props.extend(proto.metadata_props)
    g, sg = proto.graph, out.graph
    sg.name = g.name
    for field in ("node", "input", "output", "value_info"):
        getattr(sg, field).extend(getattr(g, field))
    for t in g.initializer:
        if len(t.raw_data) > _LARGE:
            sg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            sg.initializer.append(t)
    for name, data_type, dims in absent:
        sg.input.append(onnx.helper.make_tensor_value_info(name, data_type, list(dims)))
    return out.SerializeToString()


def check_streamed(proto: onnx.ModelProto, absent: tuple, b: GraphBuilder) -> None:
    """`check` for a model whose large initializers are written apart (`inline.py`): the checker
    reads `proto` with those as typed inputs."""
    try:
        onnx.checker.check_model(skeleton(proto, absent), full_check=True)
    except ERRORS as e:
        raise rejection(proto, b, e) from e


def rejection(proto: onnx.ModelProto, b: GraphBuilder, error: Exception) -> TieError:
    """The `TieError` for the checker's `error` on `proto`, blamed as the module docstring says."""
    message, index = _tagged(proto, str(error))
    if index is not None and index < len(b.origins):
        what, span = b.origins[index]
        op_type = proto.graph.node[index].op_type
        message = re.sub(rf"\(op_type:[^()]*node name: {_TAG}{index}\):? *", "", message)  # `culprit` names it
        message = message.replace(f"{_TAG}{index}", what)
        culprit = f"the {op_type} node lowered from {what}"
    else:
        what, span = _named(message, b)
        culprit = what
    detail = " ".join(message.split())
    return TieError(
        f"ONNX export of model {b.graph.name}: onnx.checker rejects {culprit}: {detail}",
        span,
        hint="a compiled program should always export, so this is a tiec bug: please report it with the spec",
    )


def _tagged(proto: onnx.ModelProto, message: str) -> tuple[str, int | None]:
    """The checker's message with every node named `tiec#<index>`, and the index it names."""
    nodes = proto.graph.node
    try:
        for i, node in enumerate(nodes):
            node.name = f"{_TAG}{i}"
        onnx.checker.check_model(proto, full_check=True)
    except ERRORS as e:
        message = str(e)
    finally:
        for node in nodes:
            node.name = ""
    found = re.search(re.escape(_TAG) + r"(\d+)", message)
    return message, int(found.group(1)) if found else None


def _named(message: str, b: GraphBuilder) -> tuple[str, Span]:
    """The first quoted name in `message` that is an IR value, parameter, input or output."""
    g = b.graph
    known: dict[str, tuple[str, Span]] = {p.name: (f"parameter '{p.name}'", p.span) for p in g.params}
    known.update({i.name: (f"input '{i.name}'", i.span) for i in g.inputs})
    known.update({o.name: (f"output '{o.name}'", o.span) for o in g.outputs})
    known.update({n.name: (f"node '{n.name}' ({n.op})", n.span) for n in g.nodes})
    for name in re.findall(r"['\"]([^'\"]+)['\"]", message):
        if name in known:
            return known[name]
    return f"model {g.name}", g.span
