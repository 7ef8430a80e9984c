"""ONNX -> TensorRT engine, for TensorRT 8.6, 10.x and 11.x. Torch-free: runs on the Jetson.

Precision handling:
- int8: the Q/DQ graph. TensorRT >= 10 builds it strongly typed, from the graph rewritten
  with fp16 regions (typed_int8.py: teacher and student in fp16, the rest fp32, as in the
  FP16 engine); 8.6 with the INT8 and FP16 builder flags, the layers of precision.py pinned
  to fp32 except Q/DQ layers and the layers a Dequantize feeds (see pin_fp32_layers).
- fp16: TensorRT <= 10 builds the fp32 graph with the FP16 flag; TensorRT 11 (no precision
  flags, always strongly typed) needs the FP16-typed graph ``model.fp16.onnx``.
- fp32: the fp32 graph, no flags.
Engines are named by precision, GPU (``dmgrd_edge.device.gpu_name``, the same at build and
at run) and TensorRT version; they are not portable. TensorRT below 8.6 (JetPack 5) is
refused (``dmgrd_edge.device.import_tensorrt``).
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from dmgrd_edge import catalog
from dmgrd_edge.atomic import atomic_write_bytes
from dmgrd_edge.bundle import file_entry
from dmgrd_edge.device import EngineError, gpu_name, import_tensorrt, trt_version
from dmgrd_edge.options import BatchProfile

from .precision import keep_fp32
from .typed_int8 import typed_int8


def trt_major(version: str) -> int:
    return trt_version(version)[0]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def engine_file_name(
    precision: str, gpu: str, trt_version: str, dla_core: int | None = None
) -> str:
    dla = f".dla{dla_core}" if dla_core is not None else ""
    return f"engines/model.{precision}{dla}.{slug(gpu)}.trt{trt_version}.engine"


@dataclass(kw_only=True)
class EngineRequest:
    bundle: Path
    precision: str
    batch: BatchProfile
    image_size: int
    workspace: int = 1 << 30
    dla_core: int | None = None


def onnx_for(request: EngineRequest, major: int) -> tuple[Path, bool]:
    """(ONNX file, whether the FP16 builder flag is needed)."""
    if request.precision == "fp16":
        if major >= 11:
            path = request.bundle / catalog.engine_source("fp16").name
            if not path.is_file():
                raise EngineError(
                    "TensorRT 11 builds FP16 only from an FP16-typed graph, and the "
                    "bundle has none",
                    "re-export with `dmgrd-edge export --fp16`",
                )
            return path, False
        return request.bundle / catalog.engine_source("fp32").name, True
    path = request.bundle / catalog.engine_source(request.precision).name
    if not path.is_file():
        raise EngineError(
            f"the bundle has no {path.name} for a {request.precision} engine",
            "re-export with --int8" if request.precision == "int8" else "re-export the bundle",
        )
    return path, False


def network_flags(trt, major: int, precision: str) -> tuple[int, bool]:
    """(create_network flags, strongly typed). INT8 is strongly typed where TensorRT has the
    flag (>= 10); 11 is always strongly typed and has deprecated the flag; below 10 the ONNX
    parser needs EXPLICIT_BATCH, which 10 deprecated and 11 removed."""
    creation = trt.NetworkDefinitionCreationFlag
    strongly_typed = major >= 11 or (precision == "int8" and hasattr(creation, "STRONGLY_TYPED"))
    flags = 0
    if strongly_typed and major < 11:
        flags |= 1 << int(creation.STRONGLY_TYPED)
    if major < 10:
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    return flags, strongly_typed


def _parse(trt, network, logger, onnx_path: Path, version: str, *, typed_graph, log):
    """Parses the ONNX file into ``network``; with ``typed_graph`` the INT8 graph is first
    rewritten so that it states each region's precision (typed_int8.py: a strongly typed
    network has no layer pins). Returns the parser and the rewrite's summary (None without)."""
    parser = trt.OnnxParser(network, logger)
    typed = None
    with tempfile.TemporaryDirectory(prefix="dmgrd-typed-") as tmp:
        parse_path = onnx_path
        if typed_graph:
            model, typed = typed_int8(onnx.load(str(onnx_path)))
            parse_path = Path(tmp) / onnx_path.name
            onnx.save(model, str(parse_path))
            log(
                f"strongly typed INT8: {typed['fp16_nodes']} nodes in fp16 (teacher, student), "
                f"{typed['fp32_nodes']} in fp32, {typed['casts']} casts"
            )
        if not parser.parse_from_file(str(parse_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(
                f"TensorRT {version} cannot parse {onnx_path.name}: {errors[:500]}",
                "re-export the bundle with this dmgrd-edge; the graph check should have caught "
                "this",
            )
    return parser, typed


def _precision_flags(trt, config, network, precision: str, fp16_flag: bool, log) -> None:
    """Builder flags of a weakly typed network: INT8 (with FP16 for the rest), FP16, and the
    layers pinned to fp32 (export/precision.py)."""
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    elif fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision in ("int8", "fp16"):
        pinned = pin_fp32_layers(trt, network)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log(f"{pinned} layers pinned to fp32 (memory selection, MSFF, bottleneck, head)")


def _use_dla(trt, builder, config, dla_core: int) -> None:
    if builder.num_DLA_cores <= dla_core:
        raise EngineError(
            f"DLA core {dla_core} asked for, this device has {builder.num_DLA_cores} DLA cores",
            "drop --dla-core or pick a core below that number",
        )
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _timing_cache(config, cache_path: Path, version: str) -> None:
    """Start from the bundle's timing cache for this GPU and TensorRT, when there is one."""
    cached = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cached)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineError(
            f"the timing cache {cache_path.name} does not match this device or TensorRT {version}",
            f"delete {cache_path} and build again",
        )


def build_engine(request: EngineRequest, log=print) -> dict:
    """Build, serialise and write an engine into the bundle; returns its manifest entry."""
    trt = import_tensorrt()
    version, major = trt.__version__, trt_major(trt.__version__)
    gpu = gpu_name()
    onnx_path, fp16_flag = onnx_for(request, major)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags, strongly_typed = network_flags(trt, major, request.precision)
    network = builder.create_network(flags)
    _parser, typed = _parse(
        trt,
        network,
        logger,
        onnx_path,
        version,
        typed_graph=strongly_typed and request.precision == "int8",
        log=log,
    )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace)
    if not strongly_typed:
        _precision_flags(trt, config, network, request.precision, fp16_flag, log)
    add_batch_profile(builder, config, request, version)
    if request.dla_core is not None:
        _use_dla(trt, builder, config, request.dla_core)
    cache_path = request.bundle / "engines" / f"timing.{slug(gpu)}.trt{version}.cache"
    _timing_cache(config, cache_path, version)
    log(f"building {request.precision} engine with TensorRT {version} on {gpu} (takes minutes)")
    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(
            f"TensorRT {version} failed to build the {request.precision} engine",
            "see the TensorRT log above; try a larger --workspace or another precision",
        )
    name = engine_file_name(request.precision, gpu, version, request.dla_core)
    atomic_write_bytes(request.bundle / name, bytes(plan))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return {
        name: {
            "kind": "engine",
            "precision": request.precision,
            "gpu": gpu,
            "trt_version": version,
            "onnx": onnx_path.name,
            "strongly_typed": strongly_typed,
            "typed_regions": typed,
            "batch": str(request.batch),
            "dla_core": request.dla_core,
            "build_seconds": time.perf_counter() - started,
        }
    }


def require_builder() -> str:
    """TensorRT (8.6 or newer), pycuda and a CUDA device are here, or an EngineError saying
    what is missing; returns the device's name. Asked first, before any file is written."""
    import_tensorrt()
    return gpu_name()


def build_engines(
    root: Path,
    precisions: list[str],
    batch: BatchProfile,
    image_size: int,
    workspace: int = 1 << 30,
    dla_core: int | None = None,
    log=print,
) -> dict[str, dict]:
    """Engines of ``precisions`` built from the ONNX files in the bundle folder ``root``
    (a committed bundle, or the export's staging folder) and written there; returns their
    manifest entries, size and sha256 included."""
    entries = {}
    for precision in precisions:
        request = EngineRequest(
            bundle=Path(root),
            precision=precision,
            batch=batch,
            image_size=image_size,
            workspace=workspace,
            dla_core=dla_core,
        )
        ((name, info),) = build_engine(request, log=log).items()
        written = file_entry(Path(root) / name, "engine", precision)
        entries[name] = {**info, "bytes": written["bytes"], "sha256": written["sha256"]}
        log(f"engine written: {Path(root) / name}")
    return entries


def add_batch_profile(builder, config, request: EngineRequest, version: str) -> None:
    """The optimization profile of input 'image': the batch range asked for, the fixed image
    size. The backend reads it back at load (``get_tensor_profile_shape``)."""
    size, b = request.image_size, request.batch
    profile = builder.create_optimization_profile()
    profile.set_shape(
        "image", (b.min, 3, size, size), (b.opt, 3, size, size), (b.max, 3, size, size)
    )
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(
            f"TensorRT {version} rejected the batch profile {b} for input 'image'",
            "give --batch N or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX",
        )


def pin_fp32_layers(trt, network) -> int:
    """With the FP16 flag TensorRT may run any layer in fp16; pin the layers that must stay
    fp32 (see precision.py). Layer names are the ONNX node names. Left alone: Quantize and
    Dequantize layers (a Dequantize runs in INT8 only) and every layer a Dequantize feeds
    (the quantized convolutions of the INT8 graph: a float pin there keeps TensorRT from
    fusing them with their Q/DQ pair, and fails the build under OBEY_PRECISION_CONSTRAINTS)."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    dequantize, quantize = trt.LayerType.DEQUANTIZE, trt.LayerType.QUANTIZE
    dequantized = {
        layer.get_output(j).name
        for layer in layers
        if layer.type == dequantize
        for j in range(layer.num_outputs)
    }
    pinned = 0
    for layer in layers:
        if not keep_fp32(layer.name, fp16=True) or layer.type in (quantize, dequantize):
            continue
        inputs = [layer.get_input(k) for k in range(layer.num_inputs)]
        if any(tensor is not None and tensor.name in dequantized for tensor in inputs):
            continue
        floating = [
            j
            for j in range(layer.num_outputs)
            if layer.get_output(j).dtype in (trt.float32, trt.float16)
        ]
        if not floating:
            continue
        layer.precision = trt.float32
        for j in floating:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned
