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
from dmgrd_edge.options import BatchProfile
from dmgrd_edge.export.precision import keep_fp32
from dmgrd_edge.export.tensorrt_engine import EngineError, EngineRequest, build_engine
from dmgrd_edge.runtime.backend import Backend, BackendError
from fakes import VERSIONS, FakeGPU, fake_tensorrt, installed  # tests/fakes

from dmgrd_edge.errors import ConfigError

SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_ckpt):
    """fp32, INT8 (TensorRT form) and FP16-typed graphs of the tiny model, batch 1:1:8."""
    from dmgrd_edge.options import ExportOptions
    from dmgrd_edge.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("trt") / "bundle"
    export_bundle(
        ExportOptions(
            checkpoint=trained_ckpt,
            out=out,
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
        EngineRequest(
            bundle=bundle,
            precision=precision,
            batch=batch,
            image_size=SIZE,
            workspace=1 << 28,
            dla_core=dla_core,
        ),
        log=lambda _: None,
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


@pytest.mark.fault("platform or library version not supported")
def test_tensorrt_below_86_is_refused(bundle):
    """JetPack 5 (TensorRT 8.5, Python 3.8): building and running refuse it, naming JetPack 6."""
    from dmgrd_edge.runtime.tensorrt_backend import TensorRTBackend

    with installed("8.6.2.3") as (trt, _):
        trt.__version__ = "8.5.2.2"
        with pytest.raises(EngineError, match="8.5.2.2 is too old") as info:
            build(bundle, "int8")
        assert "JetPack 6" in info.value.fix
        with pytest.raises(EngineError, match="too old"):
            TensorRTBackend(bundle / "model.onnx", "int8", 1)


def test_gpu_name_is_one_identity_for_build_and_run(bundle, tmp_path, monkeypatch):
    """On a Jetson the engine's device name is CUDA's name plus the board model, the same at
    build and at run; without pycuda there is no second way that could disagree."""
    import sys

    from dmgrd_edge.runtime import device_info
    from dmgrd_edge.runtime.select import _engine_for

    from dmgrd_edge import device

    board = tmp_path / "model"
    board.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr(device, "BOARD_MODEL", board)
    with installed("10.3.0"):
        name, info = build(bundle, "int8")
        assert info["gpu"] == device.gpu_name() == "Orin (NVIDIA Jetson AGX Orin Developer Kit)"
        assert (
            name == "engines/model.int8.orin-nvidia-jetson-agx-orin-developer-kit.trt10.3.0.engine"
        )
        assert device_info.device_info()["gpu"] == info["gpu"]
        assert _engine_for(register(bundle, name, info), "int8")[0] == name
        monkeypatch.setitem(sys.modules, "pycuda.driver", None)
        with pytest.raises(EngineError, match="pycuda is not installed"):
            device.gpu_name()


@pytest.mark.fault("option or combination that is not allowed")
def test_dla_build_needs_cores_the_device_has(bundle):
    with installed("11.1.0"):  # no DLA in TensorRT 11.0-11.3 on JetPack
        with pytest.raises(EngineError, match="DLA core 0 asked for, this device has 0"):
            build(bundle, "int8", BatchProfile(1, 1, 1), dla_core=0)


# -- running --------------------------------------------------------------------------------


@pytest.mark.fault("input shape or batch the model cannot take")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize(
    "profile", [BatchProfile(4, 4, 4), BatchProfile(1, 4, 8)], ids=["fixed4", "dyn1-8"]
)
def test_backend_runs_batches_inside_the_profile_and_refuses_others(
    fake, bundle, precision, profile
):
    """The backend reads the profile at load: batch 1/4/8 run when inside it (outputs as the
    engine computes them), and a --batch outside it is refused naming the range and the fix."""
    from dmgrd_edge.runtime.select import create_backend

    trt, _ = fake
    loaded = register(bundle, *build(bundle, precision, profile))
    for batch in (1, 4, 8):
        if not profile.min <= batch <= profile.max:
            with pytest.raises(
                ConfigError, match=f"takes batches of {profile.min} to {profile.max}"
            ) as info:
                create_backend(loaded, "tensorrt", precision, max_batch=batch, log=lambda _: None)
            assert "--batch" in info.value.fix and "build-engine" in info.value.fix
            continue
        chosen = create_backend(loaded, "tensorrt", precision, max_batch=batch, log=lambda _: None)
        backend = chosen.backend
        assert chosen.file == loaded.files(kind="engine")[0] and chosen.workers == 1
        assert backend.describe()["batch_range"] == [profile.min, profile.max]
        assert isinstance(backend, Backend) and backend.batch_range == (profile.min, profile.max)
        for n in (batch, 1, batch + 3):  # full, short (padded to the minimum) and split calls
            x = images(n, seed=n)
            amap, score = backend.infer(x)
            want_map, want_score = expected(x)
            assert amap.shape == (n, 1, SIZE, SIZE) and score.shape == (n,)
            np.testing.assert_allclose(amap, want_map, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(score, want_score, rtol=1e-6, atol=1e-6)
        backend.close()
    assert trt.fake.errors == []


@pytest.mark.fault("input shape or batch the model cannot take")
def test_refused_input_shape_is_an_error_not_a_wrong_answer(bundle):
    from dmgrd_edge.runtime.tensorrt_backend import TensorRTBackend

    with installed("10.3.0"):
        name, _ = build(bundle, "fp32", BatchProfile(1, 4, 8))
        backend = TensorRTBackend(bundle / name, "fp32", 8)
        backend.context.set_input_shape = lambda *_: False  # TensorRT says no
        with pytest.raises(BackendError, match="refused a batch of 2") as info:
            backend.infer(images(2))
        assert "--batch from 1 to 8" in info.value.fix
        backend.close()


@pytest.mark.fault("TensorRT engine truncated or built elsewhere")
def test_truncated_engine_is_refused_with_the_rebuild(fake, bundle):
    from dmgrd_edge.runtime.select import create_backend
    from dmgrd_edge.runtime.tensorrt_backend import TensorRTBackend

    from dmgrd_edge.bundle import BundleError

    name, info = build(bundle, "int8")
    loaded = register(bundle, name, info)
    data = (bundle / name).read_bytes()
    (bundle / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(
        BundleError, match="truncated or replaced"
    ):  # the manifest's size catches it first
        create_backend(loaded, "tensorrt", "int8", max_batch=1, log=lambda _: None)
    with pytest.raises(BackendError, match="cannot load .*truncated") as err:
        TensorRTBackend(bundle / name, "int8", 1)
    assert "dmgrd-edge build-engine" in err.value.fix
    cuda = fake[1]
    assert cuda.gpu.memory == {}  # nothing left allocated by the failed load


@pytest.mark.fault("TensorRT engine truncated or built elsewhere")
def test_mismatched_engine_is_refused(bundle):
    """Built with another TensorRT, on another GPU, or for another image size: refused with
    the rebuild command (auto says why it takes ONNX Runtime instead)."""
    from dmgrd_edge.runtime.select import create_backend
    from dmgrd_edge.runtime.tensorrt_backend import TensorRTBackend

    with installed("10.3.0"):
        name, info = build(bundle, "int8")
    loaded = register(bundle, name, info)
    with installed("8.6.2.3"):
        with pytest.raises(
            EngineError, match="built with TensorRT 10.3.0, this machine has 8.6.2.3"
        ):
            create_backend(loaded, "tensorrt", "int8", max_batch=1, log=lambda _: None)
        with pytest.raises(BackendError, match="cannot load"):
            TensorRTBackend(bundle / name, "int8", 1)  # the plan itself is refused too
        notes = []
        backend = create_backend(loaded, "auto", "int8", max_batch=1, log=notes.append).backend
        assert backend.name == "onnxruntime" and "built with TensorRT 10.3.0" in notes[0]
    with installed("10.3.0", FakeGPU("NVIDIA GeForce RTX 4090", dla_cores=0)):
        with pytest.raises(
            EngineError, match="built for GPU 'Orin', this machine has 'NVIDIA GeForce RTX 4090'"
        ):
            create_backend(loaded, "tensorrt", "int8", max_batch=1, log=lambda _: None)
    with installed("10.3.0"):
        with pytest.raises(BackendError, match="takes 64x64 images, the bundle's model 32x32"):
            TensorRTBackend(bundle / name, "int8", 1, image_size=(32, 32))


@pytest.mark.parametrize("version", ["8.6.2.3", "10.3.0"])
def test_dla_engine_runs_on_the_core_it_was_built_for(bundle, version):
    from dmgrd_edge.runtime.select import create_backend

    with installed(version) as (trt, _):
        name, info = build(bundle, "int8", BatchProfile(1, 1, 1), dla_core=1)
        assert name.startswith("engines/model.int8.dla1.") and info["dla_core"] == 1
        backend = create_backend(
            register(bundle, name, info), "tensorrt", "int8", max_batch=1, log=lambda _: None
        ).backend
        runtime = trt.fake.runtimes[-1]
        assert runtime.DLA_core == 1 and trt.fake.engines[-1]()._dla_core_in_use == 1
        backend.infer(images(1))
        backend.close()
    with installed(version, FakeGPU(dla_cores=1)):  # a module with one DLA core
        with pytest.raises(BackendError, match="built for DLA core 1, this device has 1 DLA cores"):
            create_backend(
                register(bundle, name, info), "tensorrt", "int8", max_batch=1, log=lambda _: None
            )


def test_close_frees_buffers_then_context_then_engine(fake, bundle):
    """pycuda.autoprimaryctx (the device's primary context), never autoinit; close() frees
    every device and page-locked buffer and drops context and engine; calls after it fail."""
    from dmgrd_edge.runtime.tensorrt_backend import TensorRTBackend

    trt, cuda = fake
    name, _ = build(bundle, "fp16")
    backend = TensorRTBackend(bundle / name, "fp16", 4)
    assert cuda.imported == ["pycuda.autoprimaryctx"] and "push primary context" in cuda.gpu.log
    backend.infer(images(3))
    context, engine = weakref.ref(backend.context), weakref.ref(backend.engine)
    assert len(cuda.gpu.memory) == 3
    start = len(cuda.gpu.log)
    backend.close()
    assert cuda.gpu.memory == {} and cuda.gpu.log[start:] == ["free", "free host"] * 3
    assert context() is None and engine() is None and backend.runtime is None
    backend.close()  # twice is fine
    with pytest.raises(BackendError, match="closed"):
        backend.infer(images(1))


# -- the command line -----------------------------------------------------------------------


def test_cli_build_engine_bench_and_report(fake, bundle, tmp_path):
    """`dmgrd-edge build-engine`, `dmgrd-edge bench --backend tensorrt` and `dmgrd-edge report`
    through the CLI on the fake: the engine is registered, benched on the device's name, and a
    bench batch outside the engine's profile is refused."""
    from typer.testing import CliRunner

    from dmgrd_edge.bundle import load_bundle
    from dmgrd_edge.cli import app

    trt, cuda = fake
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "build-engine",
            str(bundle),
            "--precision",
            "int8",
            "--batch",
            "1:2:4",
            "--workspace",
            "256M",
        ],
    )
    assert result.exit_code == 0, result.output
    engines = load_bundle(bundle).files(kind="engine")
    assert engines == [f"engines/model.int8.orin.trt{trt.__version__}.engine"]
    out = tmp_path / "bench.json"
    result = runner.invoke(
        app,
        [
            "bench",
            str(bundle),
            "--backend",
            "tensorrt",
            "--precision",
            "int8",
            "--batch",
            "1,4",
            "--runs",
            "3",
            "--warmup",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads(out.read_text())
    assert recorded["backend"]["backend"] == "tensorrt" and recorded["backend"]["batch_range"] == [
        1,
        4,
    ]
    assert recorded["device"]["gpu"] == "Orin" and recorded["device"]["tensorrt"] == trt.__version__
    assert [row["batch"] for row in recorded["latency"]] == [
        1,
        4,
    ] and cuda.gpu.memory == {}  # closed
    result = runner.invoke(
        app,
        [
            "bench",
            str(bundle),
            "--backend",
            "tensorrt",
            "--batch",
            "1,8",
            "--runs",
            "1",
            "--out",
            str(tmp_path / "no.json"),
        ],
    )
    assert (
        isinstance(result.exception, ConfigError)
        and "takes batches of 1 to 4" in result.exception.problem
    )
    result = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "## Orin" in (tmp_path / "report" / "report.md").read_text()


def test_export_builds_the_engine_inside_the_bundle(trained_ckpt, tmp_path):
    """export_bundle(engine=True) builds the engine itself, in the bundle it stages: the
    committed bundle lists it with its hash; a build that fails leaves no bundle at --out."""
    from dmgrd_edge.options import ExportOptions
    from dmgrd_edge.export.pipeline import export_bundle

    from dmgrd_edge.bundle import load_bundle

    def options(out, **changes):
        values = dict(engine=True, int8=True, int8_cpu=False, calib_count=4, guard_count=4)
        values.update(batch=BatchProfile(1, 2, 4), workspace=1 << 28)
        return ExportOptions(checkpoint=trained_ckpt, out=out, **{**values, **changes})

    out = tmp_path / "bundle"
    with installed("10.3.0") as (trt, cuda):
        manifest = export_bundle(options(out), log=lambda _: None)
        name = f"engines/model.int8.orin.trt{trt.__version__}.engine"
        assert [n for n, e in manifest["files"].items() if e["kind"] == "engine"] == [name]
        loaded = load_bundle(out)  # every file's size and sha256 checked, the engine's too
        assert loaded.manifest["files"][name]["onnx"] == "model.int8.onnx"
        assert [shape[0] for shape in plan(out, name)["profiles"][0]["image"]] == [1, 2, 4]
        assert trt.fake.errors == []
        assert "build the int8 TensorRT engine" in manifest["export_seconds"]
        refused = tmp_path / "refused"
        with pytest.raises(EngineError, match="DLA core 5 asked for"):
            # a DLA core the device lacks: the build fails after the ONNX files were made
            export_bundle(
                options(refused, dla_core=5, batch=BatchProfile(1, 1, 1)), log=lambda _: None
            )
        assert not refused.exists() and not [p for p in tmp_path.iterdir() if p.name[0] == "."]


@pytest.mark.fault("input shape or batch the model cannot take")
def test_bench_refuses_batches_below_the_profile(bundle):
    """bench measures the batch sizes asked for or none: a batch below the engine's minimum
    would be padded and measured as a larger one."""
    from dmgrd_edge.runtime.bench import run_bench

    with installed("10.3.0") as (_, cuda):
        register(bundle, *build(bundle, "fp32", BatchProfile(2, 2, 4)))
        with pytest.raises(ConfigError, match=r"takes batches of 2 to 4, not \[1\]"):
            run_bench(bundle, "tensorrt", "fp32", (1, 4), warmup=0, runs=1, log=lambda _: None)
        assert cuda.gpu.memory == {}  # closed on the way out
