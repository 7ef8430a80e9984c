"""INT8 post-training quantization to explicit Q/DQ with ONNX Runtime, in the form TensorRT
consumes: symmetric int8 activations and weights (zero points 0), per-channel weight scales
(Conv axis 0, ConvTranspose axis 1), Q/DQ pairs on weights, biases left in float.

Only compute-heavy operators (Conv, ConvTranspose, MatMul, Gemm) get Q/DQ; the memory
selection and the scoring head are excluded by node name and stay fp32. Calibration ranges
are computed once per export and cached in the export's staging folder, so re-quantizing
with more layers excluded (``--max-drop``) does not recalibrate.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from pathlib import Path

import onnx

from dmgrd_edge.errors import DmgrdError

QUANT_OP_TYPES = ["Conv", "ConvTranspose", "MatMul", "Gemm"]

TRT_EXTRA_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": False,
    "ForceQuantizeNoInputCheck": True,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
}


class QuantizationError(DmgrdError):
    """Quantization failed or produced a graph TensorRT would not take."""


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile}[name]


def supports_range_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantize_qdq(fp32_path: Path, int8_path: Path, reader, method: str, exclude: list[str],
                 cache_path: Path | None) -> dict:
    """Write ``int8_path``; returns what was done (method, excluded nodes, Q/DQ counts)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    kwargs = {}
    if cache_path is not None and supports_range_cache():
        kwargs["calibration_cache_path"] = str(cache_path)
    if reader is not None:
        reader.rewind()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs advice on the root logger for every call
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # and prints histogram sizes
            quantize_static(str(fp32_path), str(int8_path), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=QUANT_OP_TYPES, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(exclude), calibrate_method=_method(method),
                            extra_options=dict(TRT_EXTRA_OPTIONS), **kwargs)
    except Exception as exc:
        raise QuantizationError(f"INT8 quantization failed: {type(exc).__name__}: {str(exc)[:300]}",
                                "try --calib-method minmax, or report the checkpoint") from exc
    finally:
        root.setLevel(level)
    model = onnx.load(str(int8_path), load_external_data=False)
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    quantized = sorted(quantized_nodes(model))
    if not quantized:
        raise QuantizationError("INT8 quantization produced no quantized layer", "report the checkpoint")
    return {"method": method, "quantize_linear": q, "dequantize_linear": dq, "quantized_layers": len(quantized),
            "excluded_nodes": len(exclude), "range_cache": "calibration_cache_path" in kwargs}


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
