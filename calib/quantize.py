"""INT8 post-training quantization to explicit Q/DQ with ONNX Runtime, for two consumers.

``tensorrt`` (``model.int8.onnx``): the form TensorRT consumes: symmetric int8 activations
and weights (zero points 0), per-channel weight scales (Conv axis 0, ConvTranspose axis 1),
Q/DQ pairs on weights, biases left in float. Only compute-heavy operators (Conv,
ConvTranspose, MatMul, Gemm) get Q/DQ; TensorRT fuses the rest around them.

``cpu`` (``model.int8-cpu.onnx``): the form ONNX Runtime's CPU provider turns into integer
kernels (QLinearConv, QLinearAdd, ...): uint8 activations with zero points (ReLU6 outputs use
all 256 levels instead of 128), symmetric per-channel int8 weights, int32 biases, one Q/DQ
pair per tensor (see CPU_EXTRA_OPTIONS), and Q/DQ also on the element-wise, pooling,
concatenation and resize operators, so that integer regions are not cut into pieces by
float islands, and on the Transpose/Reshape chains of the decoder's sub-pixel up-sampling
(``export/deploy.py``), which then run on uint8 in NHWC; other Transpose/Reshape nodes (the
memory selection's flattening, the attention's reshapes) get none. TensorRT cannot take this
graph (it needs zero points of 0).

In both, the memory selection and the scoring head are excluded by node name and stay fp32.
Calibration ranges are computed once per export and target and cached in the export's
staging folder, so re-quantizing with more layers excluded (``--max-drop``) does not
recalibrate.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from dmgrd_edge.errors import DmgrdError

QUANT_OP_TYPES = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
CPU_OP_TYPES = [
    "Conv",
    "Gemm",
    "Add",
    "Mul",
    "Concat",
    "Resize",
    "MaxPool",
    "Clip",
    "Relu",
    "Sigmoid",
    "Transpose",
    "Reshape",
]
LAYOUT_OPS = (
    "Transpose",
    "Reshape",
)  # quantized in the CPU form only inside a sub-pixel interleave

TRT_EXTRA_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": False,
    "ForceQuantizeNoInputCheck": True,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
}

CPU_EXTRA_OPTIONS = {
    "ActivationSymmetric": False,
    "WeightSymmetric": True,
    # one Q/DQ pair per tensor: ONNX Runtime gives each consumer its own copy of a shared
    # DequantizeLinear itself, while a tensor with one pair per consumer has several
    # QuantizeLinear nodes, and its producer then stays a float conv
    "DedicatedQDQPair": False,
    "ForceQuantizeNoInputCheck": True,
}


@dataclass(frozen=True, kw_only=True)
class QuantPlan:
    """How the graph for one INT8 target (dmgrd_edge/catalog.py INT8_TARGETS) is quantized."""

    op_types: tuple[str, ...]
    activation: str  # onnxruntime.quantization.QuantType name
    extra_options: dict = field(default_factory=dict)


PLANS = {
    "tensorrt": QuantPlan(
        op_types=tuple(QUANT_OP_TYPES), activation="QInt8", extra_options=TRT_EXTRA_OPTIONS
    ),
    "cpu": QuantPlan(
        op_types=tuple(CPU_OP_TYPES), activation="QUInt8", extra_options=CPU_EXTRA_OPTIONS
    ),
}


class QuantizationError(DmgrdError):
    """Quantization failed or produced a graph TensorRT would not take."""


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }[name]


CALIBRATION_CHUNK = 8  # batches per statistics pass: bounds the calibration's memory


def calibration_stride(batches: int, limit: int = CALIBRATION_CHUNK) -> int:
    """The largest number of batches <= limit that divides ``batches`` (ONNX Runtime's strided
    collection needs equal chunks); 1 in the worst case (a prime count)."""
    return max(d for d in range(1, min(limit, batches) + 1) if batches % d == 0)


def supports_range_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _layout_exclusions(fp32_path: Path, op_types, exclude: list[str]) -> list[str]:
    """``exclude`` plus every layout operator outside the sub-pixel interleaves (those get
    Q/DQ only inside the up-sampling chains, see the module text)."""
    if not any(op in op_types for op in LAYOUT_OPS):
        return list(exclude)
    model = onnx.load(str(fp32_path), load_external_data=False)
    inside = set(interleave_nodes(model))
    return list(exclude) + [
        n.name
        for n in model.graph.node
        if n.op_type in LAYOUT_OPS and n.name not in inside and n.name not in exclude
    ]


@contextlib.contextmanager
def _quiet_ort():
    """ONNX Runtime's quantizer logs advice on the root logger for every call and prints
    histogram sizes; a failure becomes a QuantizationError."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except Exception as exc:
        raise QuantizationError(
            f"INT8 quantization failed: {type(exc).__name__}: {str(exc)[:300]}",
            "try --calib-method minmax, or report the checkpoint",
        ) from exc
    finally:
        root.setLevel(level)


def _qdq_counts(int8_path: Path) -> dict[str, int]:
    model = onnx.load(str(int8_path), load_external_data=False)
    quantized = sorted(quantized_nodes(model))
    if not quantized:
        raise QuantizationError(
            "INT8 quantization produced no quantized layer", "report the checkpoint"
        )
    return {
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
        "quantized_layers": len(quantized),
    }


def quantize_qdq(
    fp32_path: Path,
    int8_path: Path,
    reader,
    method: str,
    exclude: list[str],
    cache_path: Path | None,
    target: str = "tensorrt",
) -> dict:
    """Write ``int8_path`` for ``target`` (see the module text); returns what was done
    (target, method, excluded nodes, Q/DQ counts)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    plan = PLANS[target]
    extra = dict(plan.extra_options)
    exclude = _layout_exclusions(fp32_path, plan.op_types, exclude)
    if reader is not None and callable(getattr(reader, "set_range", None)) and len(reader) > 0:
        # statistics are collected a few batches at a time and merged (ranges for min-max,
        # histograms for entropy/percentile); in one pass ONNX Runtime would hold every
        # intermediate tensor of every calibration image in memory at once
        extra["CalibStridedMinMax"] = calibration_stride(len(reader))
    kwargs = {}
    if cache_path is not None and supports_range_cache():
        kwargs["calibration_cache_path"] = str(cache_path)
    if reader is not None:
        reader.rewind()
    with _quiet_ort():
        quantize_static(
            str(fp32_path),
            str(int8_path),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(plan.op_types),
            per_channel=True,
            activation_type=getattr(QuantType, plan.activation),
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=_method(method),
            extra_options=extra,
            **kwargs,
        )
    counts = _qdq_counts(int8_path)
    return {
        "target": target,
        "activations": plan.activation.lower(),
        "method": method,
        "quantize_linear": counts["quantize_linear"],
        "dequantize_linear": counts["dequantize_linear"],
        "quantized_layers": counts["quantized_layers"],
        "excluded_nodes": len(exclude),
        "range_cache": "calibration_cache_path" in kwargs,
    }


def interleave_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of every sub-pixel interleave (export/deploy.SubPixelInterleave):
    Transpose(0,2,3,1) -> Reshape -> Transpose(0,1,3,2,4,5) -> Reshape -> Transpose(0,3,1,2),
    each feeding only the next (in a Q/DQ graph, through a QuantizeLinear/DequantizeLinear pair)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    uses = Counter(name for node in model.graph.node for name in node.input)

    def perm(node) -> list[int] | None:
        if node is None or node.op_type != "Transpose":
            return None
        return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)

    def single_producer(node, op_type):
        source = producers.get(node.input[0])
        while (
            source is not None and source.op_type == "DequantizeLinear"
        ):  # step over a Q -> DQ pair
            quantize = producers.get(source.input[0])
            is_pair = quantize is not None and quantize.op_type == "QuantizeLinear"
            source = producers.get(quantize.input[0]) if is_pair else None
        ok = source is not None and source.op_type == op_type and uses[source.output[0]] == 1
        return source if ok else None

    names = []
    for last in model.graph.node:
        if perm(last) != [0, 3, 1, 2]:
            continue
        merge = single_producer(last, "Reshape")
        swap = merge and single_producer(merge, "Transpose")
        split = swap and perm(swap) == [0, 1, 3, 2, 4, 5] and single_producer(swap, "Reshape")
        first = split and single_producer(split, "Transpose")
        if first and perm(first) == [0, 2, 3, 1]:
            names += [first.name, split.name, swap.name, merge.name, last.name]
    return names


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Compute nodes whose activation input comes through a DequantizeLinear."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for node in model.graph.node:
        if node.op_type in QUANT_OP_TYPES and node.input:
            source = producers.get(node.input[0])
            if source is not None and source.op_type == "DequantizeLinear":
                names.append(node.name)
    return names
