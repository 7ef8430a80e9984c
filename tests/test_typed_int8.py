"""The INT8 graph with fp16 regions for strongly typed TensorRT (export/typed_int8.py): its
types, its outputs in ONNX Runtime against the INT8 graph it comes from, and a strongly
typed build through the fakes that sets no layer precision."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from dmgrd_edge.options import BatchProfile
from dmgrd_edge.export.precision import FP32_IN_FP16, in_fp16_region
from dmgrd_edge.export.tensorrt_engine import EngineRequest, build_engine
from dmgrd_edge.export.typed_int8 import typed_int8
from fakes import installed  # tests/fakes

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_ckpt):
    from dmgrd_edge.options import ExportOptions
    from dmgrd_edge.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("typed") / "bundle"
    export_bundle(
        ExportOptions(
            checkpoint=trained_ckpt,
            out=out,
            int8=True,
            calib_count=4,
            guard_count=4,
            int8_cpu=False,
            batch=BatchProfile(1, 1, 4),
        ),
        log=lambda _: None,
    )
    return out


@pytest.fixture(scope="module")
def typed(exported):
    return typed_int8(onnx.load(str(exported / "model.int8.onnx")))


def types_of(model):
    inferred = onnx.shape_inference.infer_shapes(model).graph
    values = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({i.name: i.data_type for i in inferred.initializer})
    return types


def test_regions_are_typed_as_the_fp16_engine_runs_them(typed):
    model, summary = typed
    assert summary["opset"] == 19 and summary["fp16_nodes"] > 50 and summary["casts"] > 0
    types = types_of(model)
    graph = model.graph
    assert [types[v.name] for v in list(graph.input) + list(graph.output)] == [FLOAT] * 3
    checked = {"fp16": 0, "fp32": 0}
    for node in graph.node:
        if node.op_type in ("Cast", "Constant", "Shape") or node.op_type.endswith("Linear"):
            continue
        floats = [types[o] for o in node.output if types.get(o) in (FLOAT, HALF)]
        if not floats:
            continue
        if in_fp16_region(node.name):
            assert set(floats) == {HALF}, node.name
            checked["fp16"] += 1
        elif node.name.startswith(FP32_IN_FP16):
            assert set(floats) == {FLOAT}, node.name
            checked["fp32"] += 1
    assert checked["fp16"] > 30 and checked["fp32"] > 30
    # the student's quantized convolutions read int8 and write fp16: their DQ scales are fp16
    student_dq = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.output[0]
        in {
            i
            for m in graph.node
            if m.name.startswith("/student/") and m.op_type == "Conv"
            for i in m.input
        }
    ]
    assert student_dq and all(types[n.input[1]] == HALF for n in student_dq)


def test_outputs_stay_within_tolerance_in_onnx_runtime(exported, typed, line_root):
    """Both graphs on ONNX Runtime's CPU provider, on the real test images through THE
    preprocess, node by node (graph optimizations off: ONNX Runtime 1.32's CPU fusions of
    fp16 Q/DQ nodes shifted every score of this graph by +0.35, while the unoptimized graph
    follows the fp32 reference; the file is for TensorRT only). The CPU provider runs fp16
    nodes it has no kernel for in fp32 between casts, so this measures the rounding at region
    boundaries and of the fp16 weights and scales, not fp16 arithmetic (that needs the
    device). Measured on the tiny test model: map 0.5 % of its range, scores 0.9 % of their
    spread, no decision changed."""
    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.data.imageio import read_image
    from dmgrd_edge.data.preprocess import preprocess

    bundle = load_bundle(exported)
    paths = sorted((line_root / "washer" / "test").glob("*/*.png"))
    batch = preprocess([read_image(p) for p in paths], bundle.preprocess)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outputs = []
    for model in (str(exported / "model.int8.onnx"), typed[0].SerializeToString()):
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        parts = [session.run(None, {"image": batch[i : i + 4]}) for i in range(0, len(batch), 4)]
        outputs.append([np.concatenate([p[k] for p in parts]) for k in (0, 1)])
    (map_a, score_a), (map_b, score_b) = outputs
    assert len(score_a) >= 8
    assert np.abs(map_b - map_a).max() <= 0.02 * float(np.ptp(map_a))
    assert np.abs(score_b - score_a).max() <= 0.02 * float(np.ptp(score_a))
    threshold = bundle.threshold_for("model.int8.onnx")
    far = np.abs(score_a - threshold) > 0.02 * float(np.ptp(score_a))  # not on the edge
    assert ((score_a > threshold) == (score_b > threshold))[far].all()


@pytest.fixture
def bundle(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "bundle", copy_function=os.link)


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_strongly_typed_builds_parse_the_typed_graph_and_pin_nothing(bundle, version):
    with installed(version) as (trt, _):
        entry = build_engine(
            EngineRequest(
                bundle=bundle,
                precision="int8",
                batch=BatchProfile(1, 1, 4),
                image_size=SIZE,
                workspace=1 << 28,
            ),
            log=lambda _: None,
        )
        ((name, info),) = entry.items()
        plan = trt.Runtime(trt.Logger()).deserialize_cuda_engine((bundle / name).read_bytes())
    assert trt.fake.errors == [] and info["strongly_typed"]
    assert info["typed_regions"]["fp16_nodes"] > 50
    assert plan._plan["pinned"] == []  # no layer precision or output type was set
    # layers writing fp16: the teacher's and student's, and at their borders the casts, the
    # Q/DQ pairs feeding them and the fp16 copies of weights and scales (constants)
    half = set(plan._plan["half_layers"])
    border = ("/Cast_fp16", "_QuantizeLinear", "_DequantizeLinear")
    compute = {n for n in half if not n.endswith("_fp16") and not any(b in n for b in border)}
    assert len(compute) > 30 and all(in_fp16_region(n) for n in compute)


def test_tensorrt_8_6_builds_the_untyped_graph(bundle):
    with installed("8.6.2.3") as (trt, _):
        entry = build_engine(
            EngineRequest(
                bundle=bundle,
                precision="int8",
                batch=BatchProfile(1, 1, 4),
                image_size=SIZE,
                workspace=1 << 28,
            ),
            log=lambda _: None,
        )
        ((name, info),) = entry.items()
        plan = trt.Runtime(trt.Logger()).deserialize_cuda_engine((bundle / name).read_bytes())
    assert info["typed_regions"] is None and not info["strongly_typed"]
    assert plan._plan["half_layers"] == [] and plan._plan["pinned"]
