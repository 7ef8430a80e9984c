"""A strict stand-in for the ``tensorrt`` Python module: TensorRT 8.6, 10.x or 11.x.

Names follow NVIDIA's bindings (github.com/NVIDIA/TensorRT, branches release/8.6,
release/10.3 and release/11.1): python/src/infer/pyCore.cpp (Logger, Builder,
IBuilderConfig, IOptimizationProfile, ITimingCache, Runtime, ICudaEngine, IExecutionContext
and the enums BuilderFlag, MemoryPoolType, DeviceType, TensorIOMode,
NetworkDefinitionCreationFlag), python/src/infer/pyGraph.cpp (INetworkDefinition, ILayer,
ITensor, LayerType), python/src/infer/pyFoundationalTypes.cpp (DataType),
python/src/parsers/pyOnnx.cpp (OnnxParser) and
python/packaging/bindings_wheel/tensorrt/__init__.py (nptype, float32/float16/... aliases).
Rules come from include/NvInfer.h and include/NvInferRuntime.h of the same branches, except
those marked "modelled".

Per version:
- 8.6: NetworkDefinitionCreationFlag EXPLICIT_BATCH (bit 0), EXPLICIT_PRECISION (1); the
  ONNX parser needs EXPLICIT_BATCH; no STRONGLY_TYPED.
- 10.x: EXPLICIT_BATCH (0, deprecated, no effect), STRONGLY_TYPED (1).
- 11.x: STRONGLY_TYPED (0, deprecated: always on), PREFER_JIT_PYTHON_PLUGINS (1),
  PREFER_AOT_PYTHON_PLUGINS (2); no EXPLICIT_BATCH; no BuilderFlag FP16, INT8,
  OBEY/PREFER_PRECISION_CONSTRAINTS; ILayer has no ``precision`` nor ``set_output_type``;
  no DLA cores (NVIDIA's documentation: no DLA on JetPack in TensorRT 11.0-11.3).

Where TensorRT logs an error (and ignores the call or fails the build), this fake raises
FakeTensorRTError at once, or fails the build with the reason in ``trt.fake.errors``:
- strongly typed networks reject ``precision`` and ``set_output_type`` (NvInfer.h, 10.x);
- a Dequantize layer's precision is INT8 only, a Quantize layer's FLOAT only (NvInfer.h);
- modelled (review finding): with OBEY_PRECISION_CONSTRAINTS, a float precision pinned on a
  layer fed by a Dequantize (a quantized convolution) fails the build;
- modelled: a weakly typed network with Q/DQ layers needs BuilderFlag.INT8;
- dynamic inputs need an optimization profile; ``set_shape`` needs min <= opt <= max
  (RuntimeError in pyCore.cpp); profile dims must match the network's fixed dims;
- DLA: DLA_core in [0, num_DLA_cores); FP16 or INT8 when weakly typed; modelled: fixed shapes,
  and GPU_FALLBACK for layers DLA cannot run (TopK, ArgMin, Gather, ...);
- ``IExecutionContext.set_input_shape`` returns False for a shape outside the profile;
  ``execute_async_v3`` returns False without a live stream, an input shape or every
  address; ``set_tensor_address`` returns False for an unknown tensor;
- ``Runtime.deserialize_cuda_engine`` returns None for bytes that are no plan (truncated) or
  a plan of another TensorRT version; a DLA plan runs on ``Runtime.DLA_core`` (unset: -1,
  core 0); setting DLA_core does nothing on a device without DLA (NvInferRuntime.h);
- deprecated flags are recorded in ``trt.fake.deprecated``.

A plan is JSON (I/O tensors, profiles, device, pinned layers). Running it computes
anomaly_map = the image's channel mean and score = the map's maximum per image, so tests can
check what the backend hands back.
"""

from __future__ import annotations

import enum
import json
import types
import weakref
from pathlib import Path

import numpy as np

from .gpu import FakeDeviceError, FakeGPU

MAGIC = b"FAKE-TRT-PLAN\n"
CACHE_MAGIC = b"FAKE-TRT-CACHE "
NOT_ON_DLA = {
    "TopK",
    "ArgMin",
    "ArgMax",
    "Gather",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Sqrt",
    "Pow",
    "MatMul",
    "Reshape",
    "Transpose",
    "Resize",
    "Cast",
}
LAYER_TYPES = {
    "Conv": "CONVOLUTION",
    "QuantizeLinear": "QUANTIZE",
    "DequantizeLinear": "DEQUANTIZE",
    "Relu": "ACTIVATION",
    "Clip": "ACTIVATION",
    "Sigmoid": "ACTIVATION",
    "MaxPool": "POOLING",
    "Add": "ELEMENTWISE",
    "Sub": "ELEMENTWISE",
    "Mul": "ELEMENTWISE",
    "Div": "ELEMENTWISE",
    "Pow": "ELEMENTWISE",
    "Max": "ELEMENTWISE",
    "Sqrt": "UNARY",
    "MatMul": "MATRIX_MULTIPLY",
    "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE",
    "Unsqueeze": "SHUFFLE",
    "Concat": "CONCATENATION",
    "Resize": "RESIZE",
    "Gather": "GATHER",
    "TopK": "TOPK",
    "ArgMin": "TOPK",
    "Cast": "CAST",
    "Constant": "CONSTANT",
}
# enum values as the bindings have them (recorded from the real modules by
# scripts/trt_api_surface.py, tests/data/trt_api/; tests/test_trt_api_surface.py compares)
BUILDER_FLAG_VALUES = {
    8: dict(
        FP16=0,
        INT8=1,
        DEBUG=2,
        GPU_FALLBACK=3,
        REFIT=5,
        DISABLE_TIMING_CACHE=6,
        TF32=7,
        SPARSE_WEIGHTS=8,
        SAFETY_SCOPE=9,
        OBEY_PRECISION_CONSTRAINTS=10,
        PREFER_PRECISION_CONSTRAINTS=11,
        DIRECT_IO=12,
        VERSION_COMPATIBLE=15,
        EXCLUDE_LEAN_RUNTIME=16,
    ),
    10: dict(
        FP16=0,
        INT8=1,
        DEBUG=2,
        GPU_FALLBACK=3,
        REFIT=4,
        DISABLE_TIMING_CACHE=5,
        TF32=6,
        SPARSE_WEIGHTS=7,
        SAFETY_SCOPE=8,
        OBEY_PRECISION_CONSTRAINTS=9,
        PREFER_PRECISION_CONSTRAINTS=10,
        DIRECT_IO=11,
        VERSION_COMPATIBLE=13,
        EXCLUDE_LEAN_RUNTIME=14,
    ),
    11: dict(
        DEBUG=2,
        GPU_FALLBACK=3,
        REFIT=4,
        DISABLE_TIMING_CACHE=5,
        TF32=6,
        SPARSE_WEIGHTS=7,
        SAFETY_SCOPE=8,
        DIRECT_IO=11,
        VERSION_COMPATIBLE=12,
        EXCLUDE_LEAN_RUNTIME=13,
    ),
}
_LAYER_TYPES_COMMON = dict(
    CONVOLUTION=0,
    ACTIVATION=2,
    POOLING=3,
    CONCATENATION=8,
    ELEMENTWISE=9,
    UNARY=11,
    SHUFFLE=13,
    TOPK=15,
    GATHER=16,
    MATRIX_MULTIPLY=17,
    CONSTANT=19,
)
LAYER_TYPE_VALUES = {  # 11.x as 10.x
    8: dict(_LAYER_TYPES_COMMON, RESIZE=26, QUANTIZE=33, DEQUANTIZE=34, CAST=47),
    10: dict(_LAYER_TYPES_COMMON, CAST=1, RESIZE=25, QUANTIZE=32, DEQUANTIZE=33),
}
ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 2: "UINT8", 6: "INT32", 7: "INT64", 9: "BOOL"}


class FakeTensorRTError(RuntimeError):
    """A call TensorRT rejects."""


class FakeLog:
    def __init__(self):
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.deprecated: list[str] = []
        self.runtimes: list = []  # every Runtime made, to check DLA_core
        self.engines: list = []  # weak references to every engine deserialised


def _enum(
    name: str, members: list[str], values: dict[str, int] | None = None
) -> type[enum.IntEnum]:
    values = values or {}
    return enum.IntEnum(name, {m: values.get(m, i) for i, m in enumerate(members)})


def make(version: str, gpu: FakeGPU) -> types.ModuleType:
    major = int(version.split(".")[0])
    if major not in (8, 10, 11):
        raise ValueError(f"the fake knows TensorRT 8.6, 10.x and 11.x, not {version}")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    fake = trt.fake = FakeLog()
    weak_api = major < 11  # precision, set_output_type, FP16/INT8 flags

    datatypes = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8"] + (
        ["BF16", "INT64", "INT4"] if major >= 10 else []
    )
    DataType = _enum("DataType", datatypes)
    aliases = {
        "float32": "FLOAT",
        "float16": "HALF",
        "int8": "INT8",
        "int32": "INT32",
        "bool": "BOOL",
        "uint8": "UINT8",
        **({"int64": "INT64", "bfloat16": "BF16"} if major >= 10 else {}),
    }
    numpy_types = {
        "FLOAT": np.float32,
        "HALF": np.float16,
        "INT8": np.int8,
        "INT32": np.int32,
        "INT64": np.int64,
        "BOOL": np.bool_,
        "UINT8": np.uint8,
    }
    floats = {DataType.FLOAT, DataType.HALF}

    if major == 8:
        creation = _enum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"])
    elif major == 10:
        creation = _enum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"])
    else:
        creation = _enum(
            "NetworkDefinitionCreationFlag",
            ["STRONGLY_TYPED", "PREFER_JIT_PYTHON_PLUGINS", "PREFER_AOT_PYTHON_PLUGINS"],
        )
    precision_flags = ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    BuilderFlag = _enum(
        "BuilderFlag",
        (precision_flags if weak_api else [])
        + [
            "DEBUG",
            "GPU_FALLBACK",
            "REFIT",
            "DISABLE_TIMING_CACHE",
            "TF32",
            "SPARSE_WEIGHTS",
            "SAFETY_SCOPE",
            "DIRECT_IO",
            "VERSION_COMPATIBLE",
            "EXCLUDE_LEAN_RUNTIME",
        ],
        BUILDER_FLAG_VALUES[major],
    )
    MemoryPoolType = _enum(
        "MemoryPoolType",
        ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM"],
    )
    DeviceType = _enum("DeviceType", ["GPU", "DLA"])
    TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    LayerType = _enum(
        "LayerType", sorted(set(LAYER_TYPES.values())), LAYER_TYPE_VALUES[min(major, 10)]
    )
    num_dla = gpu.dla_cores if major < 11 else 0

    def nptype(trt_type):
        if trt_type.name in numpy_types:
            return numpy_types[trt_type.name]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    class Dims(tuple):
        pass

    class IHostMemory(bytes):
        @property
        def nbytes(self) -> int:
            return len(self)

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity: int = 1):
            self.min_severity = min_severity

    def require_logger(logger) -> None:
        if not isinstance(logger, Logger):
            raise TypeError(f"expected a tensorrt.Logger, got {type(logger).__name__}")

    # -- network ----------------------------------------------------------------------------
    class ITensor:
        __slots__ = ("name", "dtype", "shape")

        def __init__(self, name: str, dtype, shape):
            self.name, self.dtype, self.shape = name, dtype, Dims(shape)

    class ILayer:
        __slots__ = (
            "name",
            "type",
            "_op",
            "_network",
            "_inputs",
            "_outputs",
            "_precision",
            "_output_types",
        )

        def __init__(self, network, name, op, inputs, outputs):
            self.name, self._op, self._network = name, op, network
            self.type = LayerType[LAYER_TYPES.get(op, "UNARY")]
            self._inputs, self._outputs = inputs, outputs
            self._precision, self._output_types = None, {}

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_input(self, index: int):
            return self._inputs[index]

        def get_output(self, index: int):
            return self._outputs[index]

        def get_output_type(self, index: int):
            return self._output_types.get(index, self._outputs[index].dtype)

    class ILayerWeaklyTyped(ILayer):
        """ILayer of 8.6 and 10.x (with precision and output types)."""

        __slots__ = ()

        def _reject_if_strongly_typed(self, what: str) -> None:
            if self._network._strongly_typed:
                raise FakeTensorRTError(
                    f"layer {self.name}: strongly-typed networks reject calls to {what}"
                )

        @property
        def precision(self):
            default = DataType.INT8 if self.type == LayerType.DEQUANTIZE else DataType.FLOAT
            return self._precision if self._precision is not None else default

        @precision.setter
        def precision(self, value) -> None:
            self._reject_if_strongly_typed("setPrecision")
            if self.type == LayerType.DEQUANTIZE and value != DataType.INT8:
                raise FakeTensorRTError(
                    f"layer {self.name}: IDequantizeLayer only supports INT8 precision, "
                    f"not {value.name}"
                )
            if self.type == LayerType.QUANTIZE and value != DataType.FLOAT:
                raise FakeTensorRTError(
                    f"layer {self.name}: IQuantizeLayer only supports FLOAT precision"
                )
            self._precision = DataType(value)

        @property
        def precision_is_set(self) -> bool:
            return self._precision is not None

        def set_output_type(self, index: int, dtype) -> None:
            self._reject_if_strongly_typed("setOutputType")
            if self.type == LayerType.QUANTIZE and dtype != DataType.INT8:
                raise FakeTensorRTError(
                    f"layer {self.name}: IQuantizeLayer only supports INT8 output"
                )
            if self.type == LayerType.DEQUANTIZE and dtype not in floats:
                raise FakeTensorRTError(
                    f"layer {self.name}: IDequantizeLayer only supports FLOAT/HALF output"
                )
            self._output_types[index] = DataType(dtype)

    layer_class = ILayerWeaklyTyped if weak_api else ILayer

    class INetworkDefinition:
        def __init__(self, flags: int):
            known = {int(v) for v in creation}
            bits = {b for b in range(32) if flags >> b & 1}
            if bits - known:
                raise FakeTensorRTError(
                    f"unknown NetworkDefinitionCreationFlag bits {sorted(bits - known)}"
                )
            named = {creation(b).name for b in bits}
            if major == 11 and named - {"STRONGLY_TYPED"}:
                raise FakeTensorRTError(
                    f"flags {sorted(named)}: no use for Python plugin flags here"
                )
            for name in named:
                if (major, name) in (
                    (10, "EXPLICIT_BATCH"),
                    (11, "STRONGLY_TYPED"),
                    (8, "EXPLICIT_PRECISION"),
                ):
                    fake.deprecated.append(f"NetworkDefinitionCreationFlag.{name}")
            self._explicit_batch = major >= 10 or "EXPLICIT_BATCH" in named
            self._strongly_typed = major >= 11 or "STRONGLY_TYPED" in named
            self._layers, self._inputs, self._outputs = [], [], []

        @property
        def num_layers(self) -> int:
            return len(self._layers)

        def get_layer(self, index: int):
            return self._layers[index]

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        def get_input(self, index: int):
            return self._inputs[index]

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_output(self, index: int):
            return self._outputs[index]

    class ParserError:
        def __init__(self, text: str):
            self._text = text

        def desc(self) -> str:
            return self._text

        def __str__(self) -> str:
            return self._text

    class OnnxParser:
        def __init__(self, network, logger):
            require_logger(logger)
            self._network, self._errors = network, []

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int):
            return self._errors[index]

        def parse_from_file(self, model: str) -> bool:
            if not self._network._explicit_batch:
                self._errors.append(
                    ParserError(
                        "the ONNX parser supports networks with an explicit batch "
                        "dimension only (create the network with EXPLICIT_BATCH)"
                    )
                )
                return False
            if not Path(model).is_file():
                self._errors.append(ParserError(f"failed to open {model}"))
                return False
            _parse_onnx(self._network, model)
            return True

    def dtype_of(elem_type: int):
        name = ONNX_TYPES.get(elem_type, "FLOAT")
        if name == "INT64" and major < 10:
            name = "INT32"  # 8.6 has no INT64: the parser casts it down
        return DataType[name]

    def _parse_onnx(network, path: str) -> None:
        import onnx

        model = onnx.shape_inference.infer_shapes(onnx.load(path))
        graph = model.graph
        types_of = {
            v.name: v.type.tensor_type
            for v in list(graph.value_info) + list(graph.input) + list(graph.output)
        }
        tensors: dict[str, ITensor] = {}

        def dims(tensor_type) -> list[int]:
            return [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]

        def tensor(name: str) -> ITensor:
            if name not in tensors:
                known = types_of.get(name)
                tensors[name] = ITensor(
                    name,
                    dtype_of(known.elem_type) if known else DataType.FLOAT,
                    dims(known) if known else [],
                )
            return tensors[name]

        for value in graph.input:
            network._inputs.append(tensor(value.name))
        for init in graph.initializer:
            tensors[init.name] = ITensor(init.name, dtype_of(init.data_type), list(init.dims))
            network._layers.append(
                layer_class(network, init.name, "Constant", [], [tensors[init.name]])
            )
        for node in graph.node:
            inputs = [tensor(name) if name else None for name in node.input]
            network._layers.append(
                layer_class(
                    network, node.name, node.op_type, inputs, [tensor(name) for name in node.output]
                )
            )
        network._outputs = [tensor(value.name) for value in graph.output]

    # -- builder ----------------------------------------------------------------------------
    class IOptimizationProfile:
        def __init__(self):
            self._shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - the binding's names
            lo, mid, hi = (Dims(int(d) for d in s) for s in (min, opt, max))
            if not (
                len(lo) == len(mid) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, mid, hi))
            ):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            self._shapes[input] = (lo, mid, hi)

        def get_shape(self, input: str):  # noqa: A002
            return list(self._shapes[input])

    class ITimingCache:
        def __init__(self, blob: bytes):
            self._mismatch = bool(blob) and not blob.startswith(
                CACHE_MAGIC + version.encode() + b"\n"
            )

        def serialize(self) -> IHostMemory:
            return IHostMemory(CACHE_MAGIC + version.encode() + b"\n")

    class IBuilderConfig:
        def __init__(self):
            self._flags: set = set()
            self._pools: dict = {}
            self._profiles: list = []
            self.default_device_type = DeviceType.GPU
            self.DLA_core = -1
            self._cache = None

        def set_flag(self, flag) -> None:
            self._flags.add(BuilderFlag(flag))

        def get_flag(self, flag) -> bool:
            return BuilderFlag(flag) in self._flags

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            self._pools[MemoryPoolType(pool)] = int(pool_size)

        def add_optimization_profile(self, profile) -> int:
            if not profile._shapes:
                return -1
            self._profiles.append(profile)
            return len(self._profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._profiles)

        def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
            return ITimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            if cache._mismatch and not ignore_mismatch:
                return False
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    class Builder:
        def __init__(self, logger):
            require_logger(logger)

        @property
        def num_DLA_cores(self) -> int:
            return num_dla

        def create_network(self, flags: int = 0):
            return INetworkDefinition(int(flags))

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            reason = _build_problem(network, config)
            if reason:
                fake.errors.append(reason)
                return None
            return IHostMemory(MAGIC + json.dumps(_plan(network, config)).encode())

    def _build_problem(network, config) -> str | None:
        if not network._layers:
            return "the network has no layers (nothing was parsed)"
        if config._pools.get(MemoryPoolType.WORKSPACE, 1) <= 0:
            return "workspace pool limit must be > 0"
        for tensor in network._inputs:
            profile = config._profiles[0]._shapes.get(tensor.name) if config._profiles else None
            if -1 in tensor.shape and profile is None:
                return f"input {tensor.name} has dynamic dims {tuple(tensor.shape)} and no profile"
            if profile and any(
                len(s) != len(tensor.shape)
                or any(d not in (-1, v) for d, v in zip(tensor.shape, s))
                for s in profile
            ):
                return f"profile {profile} does not fit input {tensor.name} {tuple(tensor.shape)}"
        layers = network._layers
        quantized = any(
            layer.type in (LayerType.QUANTIZE, LayerType.DEQUANTIZE) for layer in layers
        )
        if not network._strongly_typed:
            if quantized and BuilderFlag.INT8 not in config._flags:
                return "the network has Q/DQ layers but BuilderFlag.INT8 is not set"
            dq_outputs = {
                t.name
                for layer in layers
                if layer.type == LayerType.DEQUANTIZE
                for t in layer._outputs
            }
            if BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config._flags:
                for layer in layers:
                    fed = any(t is not None and t.name in dq_outputs for t in layer._inputs)
                    if fed and layer._precision in floats:
                        return (
                            f"layer {layer.name} is fed by a Dequantize but pinned to "
                            f"{layer._precision.name} under OBEY_PRECISION_CONSTRAINTS: "
                            "its Q/DQ pair cannot be fused"
                        )
        if config.default_device_type == DeviceType.DLA:
            if not 0 <= config.DLA_core < num_dla:
                return f"DLA core {config.DLA_core} does not exist ({num_dla} cores)"
            if any(
                lo != hi
                for shapes in (p._shapes.values() for p in config._profiles)
                for lo, _, hi in shapes
            ):
                return "DLA needs fixed input shapes (min == max in the profile)"
            if (
                not network._strongly_typed
                and not {BuilderFlag.FP16, BuilderFlag.INT8} & config._flags
            ):
                return "DLA runs FP16 or INT8 only: set BuilderFlag.FP16 or INT8"
            if BuilderFlag.GPU_FALLBACK not in config._flags:
                stuck = [layer.name for layer in layers if layer._op in NOT_ON_DLA]
                if stuck:
                    return f"layer {stuck[0]} cannot run on DLA and GPU_FALLBACK is not set"
        return None

    def _plan(network, config) -> dict:
        profiles = [
            {n: [list(s) for s in shapes] for n, shapes in p._shapes.items()}
            for p in config._profiles
        ]
        io = {
            t.name: {"mode": "INPUT", "shape": list(t.shape), "dtype": t.dtype.name}
            for t in network._inputs
        }
        io.update(
            {
                t.name: {"mode": "OUTPUT", "shape": list(t.shape), "dtype": t.dtype.name}
                for t in network._outputs
            }
        )
        dla = config.default_device_type == DeviceType.DLA
        return {
            "tensorrt": version,
            "gpu": gpu.name,
            "io": io,
            "profiles": profiles,
            "device": "DLA" if dla else "GPU",
            "dla_core": config.DLA_core if dla else None,
            "strongly_typed": network._strongly_typed,
            "flags": sorted(f.name for f in config._flags),
            "pinned": sorted(
                layer.name
                for layer in network._layers
                if getattr(layer, "_precision", None) is not None
            ),
            # layers writing an fp16 tensor (the graph's own types in a strongly typed network)
            "half_layers": sorted(
                layer.name
                for layer in network._layers
                if any(t.dtype == DataType.HALF for t in layer._outputs)
            ),
        }

    # -- runtime ----------------------------------------------------------------------------
    class Runtime:
        def __init__(self, logger):
            require_logger(logger)
            self._dla_core = -1
            fake.runtimes.append(self)

        @property
        def num_DLA_cores(self) -> int:
            return num_dla

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, core: int) -> None:
            if num_dla == 0:
                return  # NvInferRuntime.h: does nothing without DLA
            if not 0 <= core < num_dla:
                fake.errors.append(f"DLA core {core} outside [0, {num_dla})")
                return
            self._dla_core = int(core)

        def deserialize_cuda_engine(self, serialized_engine):
            blob = bytes(serialized_engine)
            try:
                if not blob.startswith(MAGIC):
                    raise ValueError("no plan")
                plan = json.loads(blob[len(MAGIC) :])
            except ValueError:
                fake.errors.append(
                    "Serialization assertion failed: the engine plan file is truncated or corrupt"
                )
                return None
            if plan["tensorrt"] != version:
                fake.errors.append(
                    f"the engine plan file is not compatible with this version of TensorRT, "
                    f"expecting {version}, got {plan['tensorrt']}"
                )
                return None
            if plan["device"] == "DLA" and num_dla == 0:
                fake.errors.append("the plan needs a DLA core and this device has none")
                return None
            if plan["gpu"] != gpu.name:
                fake.warnings.append(
                    "Using an engine plan file across different models of devices is not "
                    "recommended"
                )
            engine = ICudaEngine(
                plan, self, max(self._dla_core, 0) if plan["device"] == "DLA" else None
            )
            fake.engines.append(weakref.ref(engine))
            return engine

    class ICudaEngine:
        def __init__(self, plan: dict, runtime, dla_core):
            self._plan, self._runtime, self._dla_core_in_use = (
                plan,
                runtime,
                dla_core,
            )  # the runtime stays alive
            self._names = list(plan["io"])

        def _io(self, name: str) -> dict:
            if name not in self._plan["io"]:
                raise FakeTensorRTError(f"no I/O tensor named {name!r}")
            return self._plan["io"][name]

        @property
        def num_io_tensors(self) -> int:
            return len(self._names)

        def get_tensor_name(self, index: int) -> str:
            return self._names[index]

        def get_tensor_mode(self, name: str):
            return TensorIOMode[self._io(name)["mode"]]

        def get_tensor_shape(self, name: str):
            return Dims(self._io(name)["shape"])

        def get_tensor_dtype(self, name: str):
            return DataType[self._io(name)["dtype"]]

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._plan["profiles"])

        def get_tensor_profile_shape(self, name: str, profile_index: int):
            if self._io(name)["mode"] != "INPUT" or not 0 <= profile_index < len(
                self._plan["profiles"]
            ):
                raise FakeTensorRTError(f"no profile {profile_index} for input {name!r}")
            return [Dims(s) for s in self._plan["profiles"][profile_index][name]]

        def create_execution_context(self):
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine):
            self._engine = engine  # keeps the engine alive, as the binding's keep_alive does
            self._shapes: dict[str, Dims] = {}
            self._addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape) -> bool:
            io = self._engine._plan["io"].get(name)
            shape = Dims(int(d) for d in shape)
            if io is None or io["mode"] != "INPUT" or len(shape) != len(io["shape"]):
                return False
            lo, _, hi = self._engine._plan["profiles"][0][name]
            if any(d not in (-1, s) for d, s in zip(io["shape"], shape)) or not all(
                a <= s <= b for a, s, b in zip(lo, shape, hi)
            ):
                return False
            self._shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str):
            io = self._engine._io(name)
            if io["mode"] == "INPUT":
                return self._shapes.get(name, Dims(io["shape"]))
            batch = self._shapes.get("image", Dims([-1]))[0]
            return Dims([batch if d == -1 else d for d in io["shape"]])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            if name not in self._engine._plan["io"]:
                return False
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            try:
                gpu.require_context("enqueueV3")
                if stream_handle not in gpu.streams:
                    raise FakeDeviceError(f"stream handle {stream_handle} is no live stream")
                shape = self._shapes.get("image")
                if shape is None or -1 in shape:
                    raise FakeDeviceError("the input shape is not set (set_input_shape)")
                missing = [n for n in self._engine._names if n not in self._addresses]
                if missing:
                    raise FakeDeviceError(f"no address for {missing}")
                views = {}
                for name in self._engine._names:
                    dtype = np.dtype(nptype(self._engine.get_tensor_dtype(name)))
                    count = int(np.prod(self.get_tensor_shape(name)))
                    views[name] = (gpu.view(self._addresses[name], count * dtype.itemsize), dtype)
            except FakeDeviceError as exc:
                fake.errors.append(f"execute_async_v3: {exc}")
                return False
            image = (
                np.frombuffer(views["image"][0], views["image"][1])
                .reshape(shape)
                .astype(np.float32)
            )
            amap = image.mean(axis=1, keepdims=True)
            for name, value in (
                ("anomaly_map", amap),
                ("score", amap.reshape(len(amap), -1).max(axis=1)),
            ):
                memory, dtype = views[name]
                memory[:] = np.ascontiguousarray(value, dtype).tobytes()
            return True

    members = dict(
        DataType=DataType,
        NetworkDefinitionCreationFlag=creation,
        BuilderFlag=BuilderFlag,
        MemoryPoolType=MemoryPoolType,
        DeviceType=DeviceType,
        TensorIOMode=TensorIOMode,
        LayerType=LayerType,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        Runtime=Runtime,
        ICudaEngine=ICudaEngine,
        IExecutionContext=IExecutionContext,
        ILayer=layer_class,
        ITensor=ITensor,
        INetworkDefinition=INetworkDefinition,
        IBuilderConfig=IBuilderConfig,
        IOptimizationProfile=IOptimizationProfile,
        ITimingCache=ITimingCache,
        IHostMemory=IHostMemory,
        Dims=Dims,
        nptype=nptype,
    )
    members.update({alias: DataType[name] for alias, name in aliases.items()})
    for name, value in members.items():
        setattr(trt, name, value)
    return trt
