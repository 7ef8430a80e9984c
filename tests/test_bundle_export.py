"""Export to a bundle: ONNX parity, graph check, INT8 Q/DQ, FP16 graph, manifest and
tamper detection, atomic replacement, TensorRT absent."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from dmgrd_edge.calib.quantize import interleave_nodes
from dmgrd_edge.export.graph_check import GraphCheckError, check_graph, require_trt_compatible
from dmgrd_edge.options import BatchProfile, ExportOptions, parse_size

from dmgrd_edge.bundle import BundleError, load_bundle
from dmgrd_edge.errors import ConfigError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, trained_ckpt):
    from dmgrd_edge.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "washer"
    opts = ExportOptions(
        checkpoint=trained_ckpt,
        out=out,
        int8=True,
        fp16=True,
        calib_count=8,
        batch=BatchProfile(1, 2, 4),
    )
    lines = []
    export_bundle(opts, log=lines.append)
    (out.parent / "export.log").write_text("\n".join(map(str, lines)))
    return out


def test_an_int8_file_that_loses_accuracy_is_written_with_a_warning(bundle):
    """Without --max-drop a lossy INT8 file is still written (the guard's figures are in the
    manifest), and the export says so: a warning for exactly the INT8 files whose guard drop
    exceeds a point."""
    from dmgrd_edge.export.pipeline import UNGUARDED_WARNING_POINTS

    log = (bundle.parent / "export.log").read_text()
    files = load_bundle(bundle).manifest["files"]
    guards = {"model.int8.onnx": load_bundle(bundle).manifest["guard"]}
    guards["model.int8-cpu.onnx"] = files["model.int8-cpu.onnx"]["guard"]
    for name, guard in guards.items():
        lossy = max(guard["i_auroc_drop_points"], guard["pro_30_drop_points"])
        warned = f"warning: {name} loses" in log
        assert warned == (lossy > UNGUARDED_WARNING_POINTS), (name, lossy)
        if warned:
            assert "--max-drop" in log and f"{guard['pro_30_drop_points']:.1f} PRO@0.3" in log


def test_the_unguarded_warning_names_the_loss_and_the_fix():
    from dmgrd_edge.export.pipeline import unguarded_warning

    lossy = {"i_auroc_drop_points": 22.0, "pro_30_drop_points": 33.18}
    text = unguarded_warning("model.int8-cpu.onnx", lossy, None)
    assert text.startswith("warning: model.int8-cpu.onnx loses 22.0 I-AUC and 33.2 PRO@0.3")
    assert "--max-drop" in text and "model.onnx" in text
    assert unguarded_warning("model.int8-cpu.onnx", lossy, 1.0) is None  # the fit's own warning
    fine = {"i_auroc_drop_points": -1.0, "pro_30_drop_points": 0.9}
    assert unguarded_warning("model.int8.onnx", fine, None) is None


def test_manifest_and_files(bundle):
    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    assert set(manifest["files"]) == {
        "model.onnx",
        "model.int8.onnx",
        "model.int8-cpu.onnx",
        "model.fp16.onnx",
    }
    assert manifest["files"]["model.int8.onnx"]["precision"] == "int8"
    assert manifest["files"]["model.int8.onnx"]["target"] == "tensorrt"
    cpu = manifest["files"]["model.int8-cpu.onnx"]
    assert (
        cpu["precision"] == "int8"
        and cpu["target"] == "cpu"
        and cpu["calibration"]["activations"] == "quint8"
    )
    assert {"i_auroc_drop_points", "pro_30_drop_points"} <= set(cpu["guard"]) and "threshold" in cpu
    assert manifest["inputs"][0]["shape"] == ["batch", 3, 64, 64]
    assert manifest["threshold"] > 0 and "p99" in manifest["score_stats"]
    assert manifest["calibration"]["method"] == "entropy" and manifest["calibration"]["warnings"]
    assert {"i_auroc_drop_points", "pro_30_drop_points", "map_cosine_mean"} <= set(
        manifest["guard"]
    )
    assert manifest["parity"]["fp32_onnxruntime_vs_torch"]["score_max_rel_err"] <= 1e-4
    assert manifest["parity"]["fp32_onnxruntime_vs_torch"]["map_max_abs_err"] <= 1e-3
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_onnx_graph_is_self_contained(bundle):
    model = onnx.load(str(bundle / "model.onnx"))
    inits = {i.name for i in model.graph.initializer}
    assert [i.name for i in model.graph.input if i.name not in inits] == ["image"]
    assert [o.name for o in model.graph.output] == ["anomaly_map", "score"]
    assert any("normal_memory.maps0" in name for name in inits)  # the bank is a constant
    assert not any("abnormal_memory" in name for name in inits)  # not needed at inference
    assert model.opset_import[0].version >= 17
    assert check_graph(model).ok


def test_int8_graph_is_tensorrt_style(bundle):
    model = onnx.load(str(bundle / "model.int8.onnx"))
    report = check_graph(model)
    assert report.ok, report.problems
    assert report.op_counts.get("QuantizeLinear", 0) > 10 and "QLinearConv" not in report.op_counts
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [
        n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
    ]
    assert zero_points and all(
        onnx.numpy_helper.to_array(inits[z]).max() == 0 for z in zero_points if z in inits
    )
    producers = {o: n for n in model.graph.node for o in n.output}
    head = [
        n for n in model.graph.node if n.name.startswith(("/head/", "/normal_memory/", "/teacher/"))
    ]
    assert head and all(
        producers.get(n.input[0]) is None or producers[n.input[0]].op_type != "DequantizeLinear"
        for n in head
        if n.op_type in ("Conv", "MatMul")
    )
    student = [
        n for n in model.graph.node if n.name.startswith("/student/") and n.op_type == "Conv"
    ]
    assert any(producers[n.input[0]].op_type == "DequantizeLinear" for n in student)


def test_int8_cpu_graph_becomes_integer_kernels(bundle, tmp_path):
    """The CPU file has uint8 activations with zero points, quantizes the teacher, keeps the
    memory read and head in float, and ONNX Runtime's CPU provider fuses it into integer
    convolutions (checked on the graph ORT actually runs)."""
    import onnxruntime as ort

    model = onnx.load(str(bundle / "model.int8-cpu.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes and {str(inits[n.input[2]].dtype) for n in q_nodes if n.input[2] in inits} == {
        "uint8"
    }
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    fed = {
        n.name.split("/")[1]
        for n in convs
        if producers.get(n.input[0]) is not None
        and producers[n.input[0]].op_type == "DequantizeLinear"
    }
    assert {"teacher", "student", "bottleneck", "msff"} <= fed and not fed & {
        "head",
        "normal_memory",
    }
    assert not [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].startswith("normal_")
    ]
    interleave = interleave_nodes(model)
    assert len(interleave) == 3 * 5  # three decoder up-samplings, each a Q/DQ-wrapped layout chain
    assert all(
        producers[n.input[0]].op_type == "DequantizeLinear"
        for n in model.graph.node
        if n.name in interleave
    )
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(
        str(bundle / "model.int8-cpu.onnx"), options, providers=["CPUExecutionProvider"]
    )
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    ops = [n.op_type for n in optimized]
    assert ops.count("QLinearConv") >= len(convs) // 2, (ops.count("QLinearConv"), len(convs))
    # ONNX Runtime dropped the Q/DQ pairs around the interleaves: they move uint8 data
    swaps = [
        n
        for n in optimized
        if n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 1, 3, 2, 4, 5]
    ]
    optimized_producers = {o: n for n in optimized for o in n.output}
    assert len(swaps) == 3 and all(
        optimized_producers[n.input[0]].op_type == "Reshape" for n in swaps
    )


def test_deployment_rewrites_recorded_and_no_conv_transpose(bundle):
    model = onnx.load(str(bundle / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert "conv_transpose_to_pixel_shuffle=3" in props["dmgrd_edge.rewrites"]
    ops = {n.op_type for n in model.graph.node}
    assert "ConvTranspose" not in ops and "DepthToSpace" not in ops
    assert len(interleave_nodes(model)) == 3 * 5


def test_onnxruntime_runs_every_precision(bundle):
    from dmgrd_edge.runtime.onnx_backend import OnnxBackend

    x = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    ref_map, ref_score = OnnxBackend(bundle / "model.onnx").infer(x)
    for name in ("model.int8.onnx", "model.int8-cpu.onnx", "model.fp16.onnx"):
        amap, score = OnnxBackend(bundle / name).infer(x)
        assert amap.shape == (3, 1, 64, 64) and np.isfinite(score).all()
        assert np.corrcoef(amap.ravel(), ref_map.ravel())[0, 1] > 0.9


@pytest.mark.fault("bundle file tampered, truncated or not a bundle")
def test_tampered_and_truncated_files_are_detected(tmp_path, bundle):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256.*modified"):
        load_bundle(copy)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes()[:1000])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="upgrade"):
        load_bundle(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)


@pytest.mark.fault("model graph with operators TensorRT cannot parse")
def test_graph_check_names_offending_nodes():
    from onnx import TensorProto, helper

    node = helper.make_node("NonMaxSuppression", ["a"], ["b"], name="nms_0")
    bad = helper.make_node("Foo", ["b"], ["c"], name="custom_1", domain="com.example")
    graph = helper.make_graph(
        [node, bad],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    report = check_graph(model)
    assert any("opset 18" in p for p in report.problems)
    assert any("custom_1" in p for p in report.problems)
    with pytest.raises(GraphCheckError, match="custom_1"):
        require_trt_compatible(model)


@pytest.mark.fault("option or combination that is not allowed")
@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"calib_method": "kl"}, "entropy"),
        ({"max_drop": 1.0}, "INT8 only"),
        ({"int8_teacher": True}, "INT8 only"),
        ({"int8": True, "max_drop": -1.0}, "> 0"),
        ({"dla_core": 0}, "--engine"),
        ({"dla_core": 0, "engine": True, "int8": True}, "fixed batch"),
        ({"calib_count": 0}, ">= 1"),
    ],
)
def test_options_are_validated_before_work(trained_ckpt, tmp_path, kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        ExportOptions(checkpoint=trained_ckpt, out=tmp_path / "b", **kwargs).validate()
    assert not (tmp_path / "b").exists()


def test_int8_targets_follow_the_options(trained_ckpt, tmp_path):
    both = ExportOptions(checkpoint=trained_ckpt, out=tmp_path / "b", int8=True).validate()
    assert both.int8_targets() == ["tensorrt", "cpu"]
    assert both.planned_outputs() == ["onnx-fp32", "onnx-int8", "onnx-int8-cpu"]
    trt_only = ExportOptions(
        checkpoint=trained_ckpt, out=tmp_path / "b", int8=True, int8_cpu=False
    ).validate()
    assert (
        trt_only.int8_targets() == ["tensorrt"]
        and "onnx-int8-cpu" not in trt_only.planned_outputs()
    )
    assert (
        ExportOptions(checkpoint=trained_ckpt, out=tmp_path / "b").validate().int8_targets() == []
    )


@pytest.mark.fault("option or combination that is not allowed")
def test_batch_profile_and_sizes():
    assert BatchProfile.parse("4") == BatchProfile(4, 4, 4) and not BatchProfile.parse("4").dynamic
    assert BatchProfile.parse("1:4:8").dynamic
    for bad in ("0", "8:4:1", "a", "1:2"):
        with pytest.raises(ConfigError):
            BatchProfile.parse(bad)
    assert parse_size("1G") == 1 << 30 and parse_size("512M") == 512 << 20
    with pytest.raises(ConfigError):
        parse_size("lots")


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "dmgrd_edge.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.mark.fault("software, weights or device missing")
def test_reexport_replaces_atomically_and_engine_needs_tensorrt(tmp_path, trained_ckpt):
    """A second export replaces the bundle; one that asks for an engine where TensorRT is
    missing is refused before anything is written: the old bundle stays as it was."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bundle"
    first = _cli("export", trained_ckpt, "--out", out, "--calib-count", "4", "--batch", "2")
    assert first.returncode == 0, first.stderr
    old_created = json.loads((out / "manifest.json").read_text())["created"]
    again = _cli("export", trained_ckpt, "--out", out, "--calib-count", "4", "--batch", "2")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "manifest.json").read_text())["created"] >= old_created
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed: the missing-TensorRT path cannot be shown here")
    except ImportError:
        pass
    files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = _cli("export", trained_ckpt, "--out", out, "--engine", "--batch", "4")
    assert second.returncode == 2
    assert "TensorRT is not installed" in second.stderr and "build-engine" in second.stderr
    assert "export fp32 ONNX" not in second.stderr  # refused before the work
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    fresh = tmp_path / "fresh"
    third = _cli("export", trained_ckpt, "--out", fresh, "--engine")
    assert third.returncode == 2 and not fresh.exists()
    engine = _cli("build-engine", out)
    assert engine.returncode == 2 and "TensorRT is not installed" in engine.stderr


@pytest.mark.fault("existing output kept, never overwritten")
def test_export_refuses_a_folder_that_is_not_a_bundle(tmp_path, trained_ckpt):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = _cli("export", trained_ckpt, "--out", out, "--calib-count", "4")
    assert result.returncode == 2 and "not a bundle" in result.stderr
    assert (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_each_precision_has_its_threshold(bundle):
    from dmgrd_edge.bundle import Bundle

    loaded = load_bundle(bundle)
    files = loaded.manifest["files"]
    assert files["model.onnx"]["threshold"] == loaded.threshold
    shift = files["model.int8.onnx"]["score_shift_vs_fp32"]
    assert loaded.threshold_for("model.int8.onnx") == pytest.approx(loaded.threshold + shift)
    manifest = json.loads(json.dumps(loaded.manifest))
    manifest["files"]["engines/x.engine"] = {
        "kind": "engine",
        "onnx": "model.int8.onnx",
        "bytes": 1,
        "sha256": "0",
    }
    assert Bundle(bundle, manifest).threshold_for("engines/x.engine") == loaded.threshold_for(
        "model.int8.onnx"
    )


def test_calibration_statistics_are_collected_in_chunks(bundle, tmp_path):
    """ONNX Runtime keeps every intermediate tensor of the batches it is given; the quantizer
    feeds them a few at a time (memory stays bounded for 300+ calibration images)."""
    from dmgrd_edge.calib.data import CalibrationReader
    from dmgrd_edge.calib.quantize import CALIBRATION_CHUNK, calibration_stride, quantize_qdq

    assert [calibration_stride(n) for n in (1, 7, 8, 12, 13, 300)] == [1, 7, 8, 6, 1, 6]

    class Recording(CalibrationReader):
        ranges = []

        def set_range(self, start_index, end_index):
            self.ranges.append((start_index, end_index))
            super().set_range(start_index, end_index)

    loaded = load_bundle(bundle)
    images = np.random.default_rng(0).integers(0, 256, size=(20, 64, 64, 3), dtype=np.uint8)
    reader = Recording(images, loaded.preprocess)
    proto = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    from dmgrd_edge.export.onnx_export import int8_excluded_nodes

    quantize_qdq(
        bundle / "model.onnx",
        tmp_path / "q.onnx",
        reader,
        "entropy",
        int8_excluded_nodes(proto, True),
        None,
        "cpu",
    )
    assert Recording.ranges == [(0, 5), (5, 10), (10, 15), (15, 20)]
    assert all(end - start <= CALIBRATION_CHUNK for start, end in Recording.ranges)
    reader.rewind()
    assert sum(1 for _ in iter(reader.get_next, None)) == 20
