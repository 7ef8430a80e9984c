"""ONNX Runtime backend (CPU; CUDA / TensorRT execution providers when installed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .backend import BackendError, check_batch, run_in_chunks

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}


class OnnxBackend:
    name = "onnxruntime"
    calls_from_any_thread = True  # InferenceSession.run is thread-safe and needs no per-thread context

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int = 0,
                 precision: str = "fp32", spin: bool = True, spin_between_runs: bool = True):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise BackendError(f"ONNX model not found: {path}")
        available = ort.get_available_providers()
        wanted = [PROVIDER_ALIASES.get(p, p) for p in (providers or ["CPUExecutionProvider"])]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendError(f"ONNX Runtime execution provider(s) {missing} not available",
                               f"available here: {available}; install onnxruntime-gpu for CUDA/TensorRT")
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
            raise BackendError(f"ONNX Runtime cannot load {path}: {str(exc)[:300]}",
                               "the file is corrupt or was written by a newer exporter; re-export the bundle") from exc
        self.path, self.precision, self.threads = path, precision, options.intra_op_num_threads
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(f"{path} has {len(inputs)} inputs; a dmgrd-edge model has exactly one ('image')")
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

    def close(self) -> None:
        self.session = None  # ONNX Runtime frees the session with its last reference

    def describe(self) -> dict:
        import onnxruntime as ort

        return {"backend": self.name, "file": self.path.name, "precision": self.precision,
                "providers": self.providers, "onnxruntime": ort.__version__, "fixed_batch": self.fixed_batch,
                "threads": self.threads, "workers": getattr(self, "workers", 1)}
