"""The engine builder and the TensorRT backend driven through strict fakes of tensorrt (8.6,
10.x, 11.x) and pycuda (tests/fakes/), on a real exported bundle. The fakes check the
documented rules of the bindings; what they cannot show (real kernels, real precision, real
speed) is listed in docs/STATUS.md as never run on hardware."""

from __future__ import annotations

import json
import os
import shutil
import weakref

import numpy as np
import onnx
import pytest

from dmgrd_edge.errors import ConfigError
from dmgrd_edge.export.options import BatchProfile
from dmgrd_edge.export.precision import keep_fp32
from dmgrd_edge.export.tensorrt_engine import EngineError, EngineRequest, build_engine
from dmgrd_edge.runtime.backend import BackendError
from fakes import VERSIONS, FakeGPU, fake_tensorrt, installed  # tests/fakes

SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_ckpt):
    """fp32, INT8 (TensorRT form) and FP16-typed graphs of the tiny model, batch 1:1:8."""
    from dmgrd_edge.export.options import ExportOptions
    from dmgrd_edge.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("trt") / "bundle"
    export_bundle(
        ExportOptions(
            trained_ckpt,
            out,
            int8=True,
            fp16=True,
            calib_count=4,
            guard_count=4,
            int8_cpu=False,
            batch=BatchProfile(1, 1, 8),
        ),
        log=lambda _: None,
    )
    return out


@pytest.fixture
def bundle(exported, tmp_path):
    """A private copy (hard links: builds add files and replace the manifest, never edit one)."""
    return shutil.copytree(exported, tmp_path / "bundle", copy_function=os.link)


@pytest.fixture(params=VERSIONS)
def fake(request):
    with installed(request.param) as (trt, cuda):
        yield trt, cuda


def build(bundle, precision="int8", batch=BatchProfile(1, 1, 8), dla_core=None) -> tuple[str, dict]:
    entry = build_engine(
        EngineRequest(bundle, precision, batch, SIZE, 1 << 28, dla_core), log=lambda _: None
    )
    return next(iter(entry.items()))


def register(bundle, name: str, info: dict):
    from dmgrd_edge.bundle import add_files, file_entry, load_bundle

    info = {
        **info,
        **{
            k: v
            for k, v in file_entry(bundle / name, "engine", info["precision"]).items()
            if k in ("bytes", "sha256")
        },
    }
    return add_files(load_bundle(bundle), {name: info})


def plan(bundle, name: str) -> dict:
    return json.loads((bundle / name).read_bytes()[len(fake_tensorrt.MAGIC) :])


def expected(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    amap = batch.mean(axis=1, keepdims=True)
    return amap, amap.reshape(len(batch), -1).max(axis=1)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


# -- building -----------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_per_version_and_precision(fake, bundle, precision):
    """Each version gets the flags it knows (EXPLICIT_BATCH below 10 only, STRONGLY_TYPED for
    INT8 on 10, nothing deprecated on 11), the right graph, and pins only where it may."""
    trt, _ = fake
    major = int(trt.__version__.split(".")[0])
    name, info = build(bundle, precision)
    built = plan(bundle, name)
    assert trt.fake.errors == [] and trt.fake.deprecated == []
    assert (
        name == f"engines/model.{precision}.orin.trt{trt.__version__}.engine"
        and info["gpu"] == "Orin"
    )
    assert (
        info["onnx"]
        == {
            "fp32": "model.onnx",
            "int8": "model.int8.onnx",
            "fp16": "model.fp16.onnx" if major >= 11 else "model.onnx",
        }[precision]
    )
    assert (
        built["strongly_typed"]
        == info["strongly_typed"]
        == (major >= 11 or (major == 10 and precision == "int8"))
    )
    assert built["profiles"] == [
        {"image": [[1, 3, SIZE, SIZE], [1, 3, SIZE, SIZE], [8, 3, SIZE, SIZE]]}
    ]
    flags = set(built["flags"])
    if built["strongly_typed"]:
        assert not flags & {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} and built["pinned"] == []
    elif precision == "fp32":
        assert not flags & {"FP16", "INT8"} and built["pinned"] == []
    else:
        assert "OBEY_PRECISION_CONSTRAINTS" in flags and ("INT8" in flags) == (precision == "int8")
        assert built["pinned"], "memory selection, MSFF, bottleneck and head stay fp32"
    assert (bundle / "engines" / f"timing.orin.trt{trt.__version__}.cache").is_file()


def test_int8_on_86_pins_no_qdq_layer_and_no_quantized_layer(bundle):
    """8.6 builds the Q/DQ graph with INT8+FP16 flags: the fp32 pins skip Quantize/Dequantize
    layers and every layer a Dequantize feeds (the quantized convolutions)."""
    with installed("8.6.2.3") as (trt, _):
        name, _ = build(bundle, "int8")
    graph = onnx.load(bundle / "model.int8.onnx").graph
    producer = {out: node for node in graph.node for out in node.output}
    nodes = {node.name: node for node in graph.node}
    pinned = set(plan(bundle, name)["pinned"])
    fed_by_dq = {
        n.name
        for n in graph.node
        if any(
            producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
            for i in n.input
        )
    }
    assert pinned and not pinned & fed_by_dq
    assert not any(
        nodes[n].op_type in ("QuantizeLinear", "DequantizeLinear") for n in pinned if n in nodes
    )
    assert any(
        nodes[n].op_type == "Conv" for n in fed_by_dq if keep_fp32(n, fp16=True)
    )  # there were some
    assert all(keep_fp32(n, fp16=True) for n in pinned)


def test_fake_enforces_the_bindings_rules(bundle):
    """The fake is strict where TensorRT is: so a green build above means something."""
    with installed("8.6.2.3") as (trt, _):
        logger = trt.Logger(trt.Logger.WARNING)
        network = trt.Builder(logger).create_network(0)  # no EXPLICIT_BATCH below 10
        parser = trt.OnnxParser(network, logger)
        assert not parser.parse_from_file(str(bundle / "model.int8.onnx"))
        assert "EXPLICIT_BATCH" in str(parser.get_error(0))
        network = trt.Builder(logger).create_network(
            1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        )
        assert trt.OnnxParser(network, logger).parse_from_file(str(bundle / "model.int8.onnx"))
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        dequantize = next(layer for layer in layers if layer.type == trt.LayerType.DEQUANTIZE)
        with pytest.raises(fake_tensorrt.FakeTensorRTError, match="only supports INT8 precision"):
            dequantize.precision = trt.float32
        # a quantized convolution pinned to fp32 under OBEY_PRECISION_CONSTRAINTS fails the build
        dq_out = {
            layer.get_output(0).name for layer in layers if layer.type == trt.LayerType.DEQUANTIZE
        }
        fed = next(
            layer
            for layer in layers
            if layer.type == trt.LayerType.CONVOLUTION
            and layer.get_input(0) is not None
            and layer.get_input(0).name in dq_out
        )
        fed.precision = trt.float32
        builder = trt.Builder(logger)
        config = builder.create_builder_config()
        for flag in ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"):
            config.set_flag(getattr(trt.BuilderFlag, flag))
        profile = builder.create_optimization_profile()
        profile.set_shape("image", (1, 3, SIZE, SIZE), (1, 3, SIZE, SIZE), (1, 3, SIZE, SIZE))
        config.add_optimization_profile(profile)
        assert builder.build_serialized_network(network, config) is None
        assert "fed by a Dequantize" in trt.fake.errors[-1]
    with installed("10.3.0") as (trt, _):
        logger = trt.Logger(trt.Logger.WARNING)
        network = trt.Builder(logger).create_network(
            1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        )
        trt.OnnxParser(network, logger).parse_from_file(str(bundle / "model.onnx"))
        with pytest.raises(fake_tensorrt.FakeTensorRTError, match="strongly-typed"):
            network.get_layer(0).precision = trt.float32
    with installed("11.1.0") as (trt, _):
        assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
        assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt.BuilderFlag, "INT8")
        logger = trt.Logger(trt.Logger.WARNING)
        network = trt.Builder(logger).create_network(0)
        trt.OnnxParser(network, logger).parse_from_file(str(bundle / "model.onnx"))
        with pytest.raises(AttributeError):
            network.get_layer(0).precision = trt.float32


def test_tensorrt_below_86_is_refused(bundle):
    """JetPack 5 (TensorRT 8.5, Python 3.8): building refuses it, naming JetPack 6."""
    with installed("8.6.2.3") as (trt, _):
        trt.__version__ = "8.5.2.2"
        with pytest.raises(EngineError, match="8.5.2.2 is too old") as info:
            build(bundle, "int8")
        assert "JetPack 6" in info.value.fix


def test_gpu_name_is_one_identity_for_build_and_run(bundle, tmp_path, monkeypatch):
    """On a Jetson the engine's device name is CUDA's name plus the board model, the same at
    build and at run; without pycuda there is no second way that could disagree."""
    import sys

    from dmgrd_edge.export import tensorrt_engine
    from dmgrd_edge.runtime import device_info
    from dmgrd_edge.runtime.select import _engine_for

    board = tmp_path / "model"
    board.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr(tensorrt_engine, "BOARD_MODEL", board)
    with installed("10.3.0"):
        name, info = build(bundle, "int8")
        assert (
            info["gpu"]
            == tensorrt_engine.gpu_name()
            == "Orin (NVIDIA Jetson AGX Orin Developer Kit)"
        )
        assert (
            name == "engines/model.int8.orin-nvidia-jetson-agx-orin-developer-kit.trt10.3.0.engine"
        )
        assert device_info.device_info()["gpu"] == info["gpu"]
        assert _engine_for(register(bundle, name, info), "int8")[0] == name
        monkeypatch.setitem(sys.modules, "pycuda.driver", None)
        with pytest.raises(EngineError, match="pycuda is not installed"):
            tensorrt_engine.gpu_name()


def test_dla_build_needs_cores_the_device_has(bundle):
    with installed("11.1.0"):  # no DLA in TensorRT 11.0-11.3 on JetPack
        with pytest.raises(EngineError, match="DLA core 0 asked for, this device has 0"):
            build(bundle, "int8", BatchProfile(1, 1, 1), dla_core=0)
