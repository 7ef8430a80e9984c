"""Check an ONNX graph against what TensorRT's ONNX parser accepts (8.6 and later).

Source of the operator list: the support matrix in onnx-tensorrt's ``docs/operators.md``
for the TensorRT 8.5/8.6 parser (opset up to 17). TensorRT 10.x and 11.x accept a
superset, so a graph that passes this check parses on every TensorRT this toolkit
targets (JetPack 6.0's 8.6 up to 11.x). Besides operator names it checks the documented
restrictions that matter for our graphs: opset <= 17, Q/DQ zero points equal to zero, TopK's
K and the axes of Slice/Squeeze/Unsqueeze constant, and Resize coordinate modes.
Torch-free: it runs wherever onnx is installed, the Jetson included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from dmgrd_edge.errors import DmgrdError

MAX_OPSET = 17

TRT_SUPPORTED_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GRU HardSwish HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN
LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or
Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split()
)

RESIZE_MODES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}
CONSTANT_INPUTS = {"TopK": (1,), "Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,)}


class GraphCheckError(DmgrdError):
    """The graph contains something TensorRT's ONNX parser does not accept."""


@dataclass
class GraphReport:
    opset: int
    op_counts: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Tensors known at build time (initializers and Constant outputs), unconverted."""
    values = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = attr.t
    return values


def check_graph(model: onnx.ModelProto | str) -> GraphReport:
    """Inspect the graph; ``report.problems`` names each offending node."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    counts: dict[str, int] = {}
    report = GraphReport(opset, counts)
    if opset > MAX_OPSET:
        report.problems.append(
            f"opset {opset} > {MAX_OPSET}: TensorRT 8.6 (JetPack 6.0) parses up to opset 17"
        )
    constants = _constants(model)
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        label = f"{node.name or '<unnamed>'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            report.problems.append(
                f"{label}: custom domain {node.domain!r} is not parsed by TensorRT"
            )
            continue
        if node.op_type not in TRT_SUPPORTED_OPS:
            report.problems.append(f"{label}: operator not supported by the TensorRT ONNX parser")
            continue
        for index in CONSTANT_INPUTS.get(node.op_type, ()):
            if len(node.input) > index and node.input[index] and node.input[index] not in constants:
                report.problems.append(f"{label}: input {index} must be a constant for TensorRT")
        if (
            node.op_type in ("QuantizeLinear", "DequantizeLinear")
            and len(node.input) > 2
            and node.input[2]
        ):
            zero = constants.get(node.input[2])
            if zero is None or np.any(numpy_helper.to_array(zero) != 0):
                report.problems.append(
                    f"{label}: zero point must be a constant 0 (symmetric quantization)"
                )
        if node.op_type == "Resize":
            mode = next(
                (
                    a.s.decode()
                    for a in node.attribute
                    if a.name == "coordinate_transformation_mode"
                ),
                "half_pixel",
            )
            if mode not in RESIZE_MODES:
                report.problems.append(f"{label}: Resize coordinate mode {mode!r} not supported")
    return report


def require_trt_compatible(model: onnx.ModelProto | str, what: str = "model") -> GraphReport:
    report = check_graph(model)
    if not report.ok:
        listed = "\n    ".join(report.problems[:20])
        more = (
            f"\n    ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        )
        raise GraphCheckError(
            f"{what} is not TensorRT-compatible:\n    {listed}{more}",
            "this is a bug in the export; please report it with the node names above",
        )
    return report
