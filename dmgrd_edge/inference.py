"""Running an exported model, torch-free: the error every backend raises, the batch check and
chunking both backends share (ONNX Runtime and TensorRT), and an ONNX Runtime session over a
dmgrd-edge model (one input, outputs ``anomaly_map`` [B,1,H,W] and ``score`` [B]).

In the core because two stages run ONNX models: the runtime's ONNX backend
(``dmgrd_edge.runtime.onnx_backend``) is this session plus the backend interface, and the
calibration guard (``dmgrd_edge.calib.guard``) runs the fp32 and int8 graphs with it, so the
guard measures the session the line runs. onnxruntime is imported when a session is opened.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DmgrdError

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class BackendError(DmgrdError):
    """A backend that cannot be created or does not match the bundle."""


def check_batch(batch: np.ndarray, height: int, width: int) -> np.ndarray:
    if batch.ndim != 4 or batch.shape[1:] != (3, height, width):
        raise BackendError(
            f"input batch has shape {batch.shape}, the model takes (N, 3, {height}, {width})",
            "preprocess frames with dmgrd_edge.data.preprocess and the bundle's parameters",
        )
    if batch.dtype != np.float32:
        batch = batch.astype(np.float32)
    return np.ascontiguousarray(batch)


def run_in_chunks(run, batch: np.ndarray, fixed: int | None, max_batch: int | None):
    """Split/pad ``batch`` for models with a fixed or bounded batch size."""
    size = fixed or max_batch or len(batch)
    maps, scores = [], []
    for i in range(0, len(batch), size):
        chunk = batch[i : i + size]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n,) + chunk.shape[1:], chunk.dtype)])
        amap, score = run(chunk)
        maps.append(amap[:n])
        scores.append(score[:n])
    return np.concatenate(maps), np.concatenate(scores)


class OnnxModel:
    """An ONNX Runtime session over a dmgrd-edge model; ``infer(batch)`` takes a normalised
    float32 NCHW batch (padded up to a fixed batch size) and returns (anomaly_map, score)."""

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int = 0,
        spin: bool = True,
        spin_between_runs: bool = True,
    ):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise BackendError(f"ONNX model not found: {path}")
        available = ort.get_available_providers()
        wanted = [PROVIDER_ALIASES.get(p, p) for p in (providers or ["CPUExecutionProvider"])]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendError(
                f"ONNX Runtime execution provider(s) {missing} not available",
                f"available here: {available}; install onnxruntime-gpu for CUDA/TensorRT",
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.log_severity_level = 3
        if not spin:
            # idle pool threads sleep instead of spinning, leaving the cores to capture and
            # preprocessing while the main thread post-processes
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif not spin_between_runs:
            # pool threads spin inside a run (fast hand-offs between operators) but stop as soon
            # as the run returns, so the gap between runs (post-processing, capture) gets the cores
            options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(
                f"ONNX Runtime cannot load {path}: {str(exc)[:300]}",
                "the file is corrupt or was written by a newer exporter; re-export the bundle",
            ) from exc
        self.path, self.threads = path, options.intra_op_num_threads
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(
                f"{path} has {len(inputs)} inputs; a dmgrd-edge model has exactly one ('image')"
            )
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.height, self.width = int(shape[2]), int(shape[3])
        self.providers = self.session.get_providers()

    def _run(self, chunk: np.ndarray):
        anomaly_map, score = self.session.run(["anomaly_map", "score"], {self.input_name: chunk})
        return anomaly_map, score

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = check_batch(batch, self.height, self.width)
        return run_in_chunks(self._run, batch, self.fixed_batch, None)
