"""TensorRT engine building. The pure parts (naming, matching, which ONNX feeds which
precision) run everywhere; building and running an engine needs TensorRT and a CUDA device
and is skipped cleanly without them."""

import pytest

from dmgrd_edge.device import EngineError, check_engine_matches
from dmgrd_edge.export.tensorrt_engine import EngineRequest, engine_file_name, onnx_for, slug
from dmgrd_edge.options import BatchProfile


def test_engine_names_carry_precision_gpu_and_version():
    name = engine_file_name("int8", "NVIDIA Jetson AGX Orin", "10.3.0")
    assert name == "engines/model.int8.nvidia-jetson-agx-orin.trt10.3.0.engine"
    assert (
        engine_file_name("fp16", "Orin", "8.6.2", dla_core=1)
        == "engines/model.fp16.dla1.orin.trt8.6.2.engine"
    )
    assert slug("  ") == "unknown"


@pytest.mark.fault("TensorRT engine truncated or built elsewhere")
def test_mismatched_engine_says_how_to_rebuild():
    entry = {"precision": "int8", "gpu": "Orin", "trt_version": "10.3.0"}
    check_engine_matches(entry, "Orin", "10.3.0", "e")
    with pytest.raises(EngineError, match="TensorRT 10.3.0.*8.6.2") as info:
        check_engine_matches(entry, "Orin", "8.6.2", "e")
    assert "dmgrd-edge build-engine" in str(info.value)
    with pytest.raises(EngineError, match="GPU"):
        check_engine_matches(entry, "RTX 4090", "10.3.0", "e")


def test_onnx_choice_per_precision_and_version(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "model.int8.onnx").write_bytes(b"x")
    request = EngineRequest(
        bundle=tmp_path, precision="fp16", batch=BatchProfile(1, 1, 1), image_size=64
    )
    assert onnx_for(request, 10) == (tmp_path / "model.onnx", True)  # FP16 flag on <= 10
    with pytest.raises(EngineError, match="--fp16"):
        onnx_for(request, 11)  # 11 needs the FP16-typed graph
    (tmp_path / "model.fp16.onnx").write_bytes(b"x")
    assert onnx_for(request, 11) == (tmp_path / "model.fp16.onnx", False)
    assert (
        onnx_for(
            EngineRequest(
                bundle=tmp_path, precision="int8", batch=BatchProfile(1, 1, 1), image_size=64
            ),
            8,
        )[0].name
        == "model.int8.onnx"
    )


@pytest.fixture(scope="module")
def trt_and_cuda():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip("no CUDA device")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no usable CUDA device: {exc}")
    return trt


@pytest.mark.tensorrt
def test_build_int8_engine_and_register_it(trt_and_cuda, tmp_path, trained_ckpt):
    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.cli import _build_engines
    from dmgrd_edge.options import ExportOptions
    from dmgrd_edge.export.pipeline import export_bundle

    out = tmp_path / "bundle"
    export_bundle(
        ExportOptions(
            checkpoint=trained_ckpt, out=out, int8=True, calib_count=4, batch=BatchProfile(1, 1, 2)
        ),
        log=lambda _: None,
    )
    _build_engines(out, ["int8"], BatchProfile(1, 1, 2), 1 << 28, None)
    bundle = load_bundle(out)
    engines = bundle.files(kind="engine")
    assert (
        len(engines) == 1
        and bundle.manifest["files"][engines[0]]["trt_version"] == trt_and_cuda.__version__
    )
