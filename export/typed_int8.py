"""The INT8 graph for strongly typed TensorRT networks (10.x for INT8, always on 11.x).

A strongly typed network runs every tensor in the type the ONNX graph gives it, and TensorRT
refuses layer precisions and output types there. The INT8 Q/DQ graph (``model.int8.onnx``)
is fp32 outside its quantized convolutions, so built strongly typed it would run the teacher
and the student's unquantized layers in fp32, which the FP16 engine runs in fp16: the INT8
engine could then be slower than the FP16 one. This rewrite states the precision of each
region in the graph itself, the same regions as the FP16 graph (``precision.FP16_REGIONS``):

- the teacher and the student (``/teacher/``, ``/student/``) compute in fp16: their float
  weights and the scales of their Q/DQ pairs become fp16 initializers, so a quantized
  convolution there reads int8 and writes fp16;
- everything else stays fp32 (the memory reads, MSFF, the bottleneck and the head:
  ``precision.FP32_IN_FP16``; MSFF's activations exceed fp16's range), and so do nodes
  without a module scope;
- a Quantize/Dequantize node takes the region of the nodes it feeds (fp32 if any of them is),
  except that one whose scale fp16 cannot hold (below 6.1e-5, e.g. the int32 bias scales)
  stays fp32 and its output is cast;
- a Cast node converts a tensor where it crosses from one region into the other (one per
  tensor and direction); Resize's roi/scales inputs stay fp32, as ONNX requires; the graph's
  input and outputs stay fp32.

Every region then runs in the FP16 engine's precision or a lower one, so the INT8 engine
does no more work than the FP16 one, by construction. fp16 scales and zero points on
QuantizeLinear/DequantizeLinear need opset 19, so the graph is converted from its opset 17
first (``onnx.version_converter``); TensorRT 10 and 11 parse it, 8.6 never gets it (it
builds ``model.int8.onnx`` weakly typed with the FP16 flag and fp32 pins). The rewrite is
checked with ONNX's full checker; ``tests/test_typed_int8.py`` runs both graphs in ONNX
Runtime and compares their outputs. Torch-free: it runs where the engine is built.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference, version_converter

from dmgrd_edge.errors import DmgrdError

from .precision import in_fp16_region

QDQ_OPSET = 19
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = float(np.finfo(np.float16).tiny)
QDQ = ("QuantizeLinear", "DequantizeLinear")
# inputs that keep their own float type whatever the node computes in
FIXED_FLOAT_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
# outputs typed by an attribute, not by the inputs
ATTRIBUTE_TYPED = {"Cast", "CastLike", "ConstantOfShape", "Constant", "EyeLike"}


class TypedGraphError(DmgrdError):
    """The INT8 graph cannot be given fp16 regions."""


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _regions(nodes: list[onnx.NodeProto], fp32_scales: set[str]) -> list[bool]:
    """True for nodes that compute in fp16. A Q/DQ node whose scale fp16 cannot hold
    (``fp32_scales``) stays fp32, and its fp16 consumers get a cast of its output."""
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    half = [in_fp16_region(node.name) and node.op_type not in QDQ for node in nodes]
    for index in reversed(range(len(nodes))):  # consumers come later in a sorted graph
        node = nodes[index]
        if node.op_type in QDQ:
            users = [u for out in node.output for u in consumers.get(out, [])]
            scale_fits = len(node.input) < 2 or node.input[1] not in fp32_scales
            half[index] = bool(users) and all(half[u] for u in users) and scale_fits
    return half


def _fp32_scales(initializers: dict[str, onnx.TensorProto]) -> set[str]:
    """Float initializers with a non-zero value below fp16's smallest normal number (6.1e-5):
    as a Q/DQ scale it would lose its precision or become 0. The bias and weight scales of
    convolutions with small weights are of this kind (down to 4e-8 in our INT8 graphs)."""
    small = set()
    for name, tensor in initializers.items():
        if tensor.data_type != FLOAT:
            continue
        values = np.abs(numpy_helper.to_array(tensor))
        if values.size and float(values[values > 0].min(initial=np.inf)) < FP16_TINY:
            small.add(name)
    return small


class _Rewrite:
    """The new nodes and initializers of the typed graph, and the tensor types as they are
    rewritten: each float tensor converted at most once per target type."""

    def __init__(self, dtype: dict[str, int], initializers: dict[str, onnx.TensorProto]):
        self.dtype = dtype
        self.initializers = initializers
        self.converted: dict[tuple[str, int], str] = {}
        self.new_initializers: list[onnx.TensorProto] = []
        self.new_nodes: list[onnx.NodeProto] = []
        self.casts = 0

    def convert(self, name: str, to: int) -> str:
        """The name of ``name`` in type ``to``: a converted initializer or a Cast node."""
        key = (name, to)
        if key in self.converted:
            return self.converted[key]
        suffix = "_fp16" if to == HALF else "_fp32"
        if name in self.initializers:
            values = numpy_helper.to_array(self.initializers[name])
            if to == HALF and values.size and float(np.abs(values).max()) > FP16_MAX:
                raise TypedGraphError(
                    f"initializer {name} holds values beyond fp16's range for an fp16 region",
                    "this is a bug in the precision regions; build with --precision fp16",
                )
            target = np.float16 if to == HALF else np.float32
            tensor = numpy_helper.from_array(values.astype(target), name + suffix)
            self.new_initializers.append(tensor)
        else:
            cast = helper.make_node(
                "Cast", [name], [name + suffix], name=name + "/Cast" + suffix, to=to
            )
            self.new_nodes.append(cast)
            self.casts += 1
        self.dtype[name + suffix] = to
        self.converted[key] = name + suffix
        return name + suffix

    def add(self, node: onnx.NodeProto, fp16: bool) -> None:
        """The node with its float inputs in its region's type (after the casts they need)."""
        dtype = self.dtype
        fixed = FIXED_FLOAT_INPUTS.get(node.op_type, set())
        for index, name in enumerate(node.input):
            current = dtype.get(name)
            if not name or current not in (FLOAT, HALF):
                continue
            want = HALF if fp16 and index not in fixed else FLOAT
            if current != want:
                node.input[index] = self.convert(name, want)
        if fp16 and node.op_type not in ATTRIBUTE_TYPED:
            for name in node.output:
                if dtype.get(name) == FLOAT:
                    dtype[name] = HALF
        self.new_nodes.append(node)

    def fp32_outputs(self, outputs: set[str]) -> None:
        """Graph outputs produced in an fp16 region are handed out through a cast to fp32."""
        for name in outputs:
            if self.dtype.get(name) == HALF:
                inner = name + "_fp16_out"
                for node in self.new_nodes:
                    node.output[:] = [inner if o == name else o for o in node.output]
                    node.input[:] = [inner if i == name else i for i in node.input]
                self.new_nodes.append(
                    helper.make_node("Cast", [inner], [name], name=name + "/Cast", to=FLOAT)
                )
                self.casts += 1


def _tensor_types(graph: onnx.GraphProto) -> dict[str, int]:
    """The element type of each value, graph input and output, and initializer."""
    dtype = {
        v.name: v.type.tensor_type.elem_type
        for v in list(graph.value_info) + list(graph.input) + list(graph.output)
    }
    dtype.update({init.name: init.data_type for init in graph.initializer})
    return dtype


def _replace_graph(model: onnx.ModelProto, rewrite: _Rewrite) -> onnx.ModelProto:
    """The graph's nodes and (used) initializers replaced by the rewrite's, shapes inferred
    again and the model checked."""
    graph = model.graph
    used = {name for node in rewrite.new_nodes for name in node.input}
    kept = [i for i in list(graph.initializer) + rewrite.new_initializers if i.name in used]
    del graph.node[:]
    graph.node.extend(rewrite.new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise TypedGraphError(
            f"the INT8 graph with fp16 regions does not check: {str(exc)[:300]}",
            "this is a bug in the export; build with --precision fp16 meanwhile",
        ) from exc
    return model


def typed_int8(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """(the rewritten model, a summary: nodes per region, casts added)."""
    if _opset(model) < QDQ_OPSET:
        model = version_converter.convert_version(model, QDQ_OPSET)
    model = shape_inference.infer_shapes(model)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = list(graph.node)
    half = _regions(nodes, _fp32_scales(initializers))
    rewrite = _Rewrite(_tensor_types(graph), initializers)
    for node, fp16 in zip(nodes, half):
        rewrite.add(node, fp16)
    rewrite.fp32_outputs({o.name for o in graph.output})
    model = _replace_graph(model, rewrite)
    summary = {
        "fp16_nodes": sum(half),
        "fp32_nodes": len(half) - sum(half),
        "casts": rewrite.casts,
        "opset": _opset(model),
    }
    return model, summary
