"""torch -> ONNX: the whole scoring path in one graph, memory bank as initializers.

One input ``image`` (normalised NCHW float32), outputs ``anomaly_map`` [B,1,H,W] and
``score`` [B]. Opset 17 (the highest TensorRT 8.6 parses), TorchScript-based exporter with
constant folding, then the onnxscript optimizer (folding, dead-code removal). One file
unless the weights exceed protobuf's 2 GB limit. The module is first passed through the
equivalence-preserving deployment rewrites of ``deploy.py`` (recorded in the graph's
metadata); the parity check compares the graph with the original module.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from dmgrd_edge.errors import DmgrdError
from dmgrd_edge.model.dmgrd import DMGRD, AnomalyOutput
from dmgrd_edge.options import BatchProfile

from .precision import int8_excluded

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = list(AnomalyOutput._fields)
PROTOBUF_LIMIT = 2 * 1024**3 - 1024**2


class ExportError(DmgrdError):
    """The exported graph is malformed or disagrees with PyTorch."""


class HalfPrecisionDMGRD(torch.nn.Module):
    """The deployable module with teacher and student in fp16 and the memory reads, MSFF,
    bottleneck and head in fp32 (see precision.py); fp32 input and outputs. It holds the
    model's own submodules under the same names and runs the model's own ``guide`` and
    ``outputs`` steps, so only the casts are written here."""

    guide = DMGRD.guide
    outputs = DMGRD.outputs
    _fuse = DMGRD._fuse
    _memory_map = DMGRD._memory_map

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        import copy

        model = copy.deepcopy(model).float().eval()
        self.config = model.config
        for name, child in model.named_children():
            setattr(self, name, child)
        self.teacher.half()
        if self.config.uses_student:
            self.student.half()

    def forward(self, image: torch.Tensor):
        teacher = [f.float() for f in self.teacher(image.half())]
        student = None
        if self.config.score_source != "memory":
            student = [f.float() for f in self.student(self.bottleneck(self.guide(teacher)).half())]
        return self.outputs(teacher, student)


def torch_to_onnx(
    model: torch.nn.Module, path: Path, batch: BatchProfile, image_size: int, fp16: bool = False
) -> onnx.ModelProto:
    """Export the fp32 graph, or with ``fp16`` the FP16-typed graph for TensorRT 11."""
    from .deploy import deployable

    model, rewrites = deployable(model)
    model = HalfPrecisionDMGRD(model) if fp16 else model
    dummy = torch.zeros(batch.opt, 3, image_size, image_size)
    dynamic = {
        INPUT_NAME: {0: "batch"},
        OUTPUT_NAMES[0]: {0: "batch"},
        OUTPUT_NAMES[1]: {0: "batch"},
    }
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=OUTPUT_NAMES,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes=dynamic if batch.dynamic else None,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    from onnxscript import optimizer

    proto = optimizer.optimize(proto)
    proto.producer_name = "dmgrd-edge"
    onnx.helper.set_model_props(
        proto, {"dmgrd_edge.rewrites": ",".join(f"{k}={v}" for k, v in rewrites.items())}
    )
    check_interface(proto, batch, image_size)
    save_onnx(proto, path)
    return proto


def save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    large = proto.ByteSize() > PROTOBUF_LIMIT
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=large,
        location=path.name + ".data" if large else None,
    )
    onnx.checker.check_model(str(path))


def check_interface(proto: onnx.ModelProto, batch: BatchProfile, image_size: int) -> None:
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise ExportError(
            f"exported graph has inputs {[i.name for i in inputs]}, expected exactly ['image']"
        )
    if [o.name for o in proto.graph.output] != OUTPUT_NAMES:
        raise ExportError(
            f"exported graph has outputs {[o.name for o in proto.graph.output]}, expected "
            f"{OUTPUT_NAMES}"
        )
    dims = [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    expected = ["batch" if batch.dynamic else batch.min, 3, image_size, image_size]
    if dims != expected:
        raise ExportError(f"input shape {dims} differs from the expected {expected}")


def int8_excluded_nodes(proto: onnx.ModelProto, quantize_teacher: bool = False) -> list[str]:
    """Nodes that get no Q/DQ in the INT8 graph (see precision.int8_excluded)."""
    return [n.name for n in proto.graph.node if int8_excluded(n.name, quantize_teacher)]


@dataclass
class Parity:
    score_max_rel_err: float
    map_max_abs_err: float
    images: int

    def as_dict(self) -> dict[str, float]:
        return {
            "score_max_rel_err": self.score_max_rel_err,
            "map_max_abs_err": self.map_max_abs_err,
            "images": self.images,
        }


@torch.no_grad()
def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    images: np.ndarray,
    batch: BatchProfile,
    score_rtol: float = 1e-4,
    map_atol: float = 1e-3,
) -> Parity:
    """Compare ONNX Runtime (CPU) with PyTorch on real, preprocessed images."""
    from dmgrd_edge.runtime.onnx_backend import OnnxBackend

    backend = OnnxBackend(onnx_path, providers=["CPUExecutionProvider"])
    rel, absolute, peak = 0.0, 0.0, 1.0
    step = batch.max if batch.dynamic else batch.min
    for i in range(0, len(images), step):
        chunk = images[i : i + step]
        if not batch.dynamic and len(chunk) != batch.min:
            continue
        ort_map, ort_score = backend.infer(chunk)
        if not (np.isfinite(ort_map).all() and np.isfinite(ort_score).all()):
            raise ExportError(
                f"{onnx_path.name} produces non-finite values (overflow) on real images",
                "this is a bug in the export's precision plan (export/precision.py); "
                "please report it",
            )
        ref = model(torch.from_numpy(chunk))
        ref_map, ref_score = ref.anomaly_map.numpy(), ref.score.numpy()
        # relative above 1 (about a normal image's score), absolute below: a training image
        # of the nearest-neighbour baseline is in its own bank and scores about 0, where float
        # rounding of the features moves the distance (a square root) by ~1e-6
        rel = max(
            rel, float(np.max(np.abs(ort_score - ref_score) / np.maximum(np.abs(ref_score), 1.0)))
        )
        absolute = max(absolute, float(np.max(np.abs(ort_map - ref_map))))
        peak = max(peak, float(np.max(np.abs(ref_map))))
    parity = Parity(rel, absolute, len(images))
    # the map's limit scales with its peak above 1: a map on a larger scale (the combined
    # map divided by its shares' standard deviations) carries a larger rounding error
    if rel > score_rtol or absolute > map_atol * peak:
        raise ExportError(
            f"ONNX output differs from PyTorch: score rel. error {rel:.2e} (limit "
            f"{score_rtol:.0e}), "
            f"map abs. error {absolute:.2e} (limit {map_atol:.0e} x the map's peak {peak:.3g})",
            "this is a bug in the export; please report it with the checkpoint",
        )
    return parity
