"""The catalog of model files a bundle can hold: which file serves which precision, target
and consumer. Export writes files from it, the engine builder picks its ONNX input from it,
the runtime picks the file to run from it, and the manifest's kinds and precisions are
checked against it. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16", "int8")
# the runtime's preference when asked for ``auto`` (an engine or an ONNX file)
PRECISION_PREFERENCE = ("int8", "fp16", "fp32")
# every kind of file a manifest may list (model files, and the engine builder's cache)
FILE_KINDS = ("onnx", "engine", "timing_cache", "report")
# the consumers an INT8 graph is quantized for (calib/quantize.py)
INT8_TARGETS = ("tensorrt", "cpu")


@dataclass(frozen=True, kw_only=True)
class ModelFile:
    """One entry of the catalog.

    ``key`` names the output in export's plan; ``name`` is the file's path inside the bundle
    (a pattern for engines, which are named when built); ``precision`` is None where the
    file takes the precision it is built with; ``target`` is the consumer an INT8 (or FP16)
    graph was made for; ``trt_parsable`` says whether the graph must pass TensorRT's parser
    check at export."""

    key: str
    name: str
    kind: str
    precision: str | None
    target: str | None
    consumer: str
    written_when: str
    trt_parsable: bool

    def __post_init__(self):
        if self.kind not in FILE_KINDS:
            raise ValueError(f"{self.key}: unknown file kind {self.kind!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"{self.key}: unknown precision {self.precision!r}")
        if self.target is not None and self.target not in INT8_TARGETS:
            raise ValueError(f"{self.key}: unknown target {self.target!r}")


CATALOG: tuple[ModelFile, ...] = (
    ModelFile(
        key="onnx-fp32",
        name="model.onnx",
        kind="onnx",
        precision="fp32",
        target=None,
        consumer="ONNX Runtime (any provider); TensorRT fp32 engines, and fp16 below TensorRT 11",
        written_when="always",
        trt_parsable=True,
    ),
    ModelFile(
        key="onnx-int8",
        name="model.int8.onnx",
        kind="onnx",
        precision="int8",
        target="tensorrt",
        consumer="TensorRT (and ONNX Runtime's CUDA/TensorRT providers)",
        written_when="--int8 (explicit Q/DQ for TensorRT: symmetric int8, per-channel weights)",
        trt_parsable=True,
    ),
    ModelFile(
        key="onnx-int8-cpu",
        name="model.int8-cpu.onnx",
        kind="onnx",
        precision="int8",
        target="cpu",
        consumer="ONNX Runtime CPU provider",
        written_when="--int8 unless --no-int8-cpu "
        "(Q/DQ for ONNX Runtime's CPU provider: uint8 activations)",
        trt_parsable=False,
    ),
    ModelFile(
        key="onnx-fp16",
        name="model.fp16.onnx",
        kind="onnx",
        precision="fp16",
        target="tensorrt",
        consumer="strongly typed TensorRT 11 (fp16 engines); ONNX Runtime",
        written_when="--fp16 (FP16-typed graph for strongly typed TensorRT 11)",
        trt_parsable=True,
    ),
    ModelFile(
        key="engine",
        name="engines/model.<precision>.<gpu>.trt<version>.engine",
        kind="engine",
        precision=None,
        target="tensorrt",
        consumer="TensorRT on the GPU (and TensorRT version) it was built on",
        written_when="--engine, or `dmgrd-edge build-engine` on the device (needs TensorRT)",
        trt_parsable=False,
    ),
)

_BY_KEY = {f.key: f for f in CATALOG}


def by_key(key: str) -> ModelFile:
    return _BY_KEY[key]


def onnx_file(precision: str, target: str | None = None) -> ModelFile:
    """The ONNX file of ``precision`` (made for ``target`` when given); KeyError if none."""
    for f in CATALOG:
        if f.kind != "onnx" or f.precision != precision:
            continue
        if target is None or f.target in (target, None):
            return f
    raise KeyError(f"no ONNX file of precision {precision!r} for target {target!r}")


def int8_file(target: str) -> ModelFile:
    """The INT8 ONNX file quantized for ``target`` (one of INT8_TARGETS)."""
    return onnx_file("int8", target)


def engine_source(precision: str) -> ModelFile:
    """The ONNX file an engine of ``precision`` is built from: the graph made for TensorRT
    (for fp16 below TensorRT 11 the builder takes the fp32 graph with the FP16 flag)."""
    return onnx_file(precision, "tensorrt")
