"""The TensorRT operator check's list is the TensorRT 8.5 ONNX parser's support matrix."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from dmgrd_edge.export.graph_check import TRT_SUPPORTED_OPS, check_graph

MATRIX = Path(__file__).parent / "data" / "onnx_tensorrt_8.5_operators.tsv"


def matrix() -> dict[str, str]:
    lines = [line for line in MATRIX.read_text().splitlines() if not line.startswith("#")]
    return dict(line.split("\t") for line in lines)


def test_the_list_is_exactly_the_8_5_parsers_supported_operators():
    table = matrix()
    assert len(table) == 180 and set(table.values()) == {"Y", "N"}
    assert TRT_SUPPORTED_OPS == {name for name, yes in table.items() if yes == "Y"}
    assert {"HardSwish", "Mod", "OneHot"} <= TRT_SUPPORTED_OPS
    assert not {"Hardmax", "LayerNormalization", "GroupNormalization", "Gelu"} & TRT_SUPPORTED_OPS


def one_node_model(op: str, inputs: int = 1, **attrs) -> onnx.ModelProto:
    names = [f"x{i}" for i in range(inputs)]
    node = helper.make_node(op, names, ["y"], name=f"/head/{op}", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("op", "inputs"), [("HardSwish", 1), ("Mod", 2), ("HardSigmoid", 1)])
def test_operators_the_8_5_parser_supports_pass(op, inputs):
    assert check_graph(one_node_model(op, inputs)).ok


@pytest.mark.fault("model graph with operators TensorRT cannot parse")
@pytest.mark.parametrize("op", ["Hardmax", "LayerNormalization", "Det"])
def test_operators_it_does_not_are_named(op):
    report = check_graph(one_node_model(op))
    assert report.problems == [
        f"/head/{op} ({op}): operator not supported by the TensorRT ONNX parser"
    ]
