"""The ONNX check of a large model reads its skeleton: the same graph with each large initializer a
typed input. It must reject what the full check rejects and accept what it accepts."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiec.backends.onnx.check import skeleton


def model(weight_shape: tuple[int, int]) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones(weight_shape, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1024])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_the_skeleton_checks_like_the_model():
    good = model((512, 1024))  # 2 MiB: becomes an input of the skeleton
    onnx.checker.check_model(good, full_check=True)
    onnx.checker.check_model(skeleton(good), full_check=True)
    assert [i.name for i in onnx.load_from_string(skeleton(good)).graph.input] == ["x", "w"]
    bad = model((500, 1024))  # the product's inner dims disagree
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(bad, full_check=True)
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(skeleton(bad), full_check=True)
