"""ONNX Runtime backend (CPU; CUDA / TensorRT execution providers when installed): the core's
ONNX Runtime session (``dmgrd_edge.inference.OnnxModel``, shared with the calibration guard)
with the backend interface of ``backend.py``."""

from __future__ import annotations

from pathlib import Path

from dmgrd_edge.inference import OnnxModel


class OnnxBackend(OnnxModel):
    name = "onnxruntime"
    calls_from_any_thread = True  # InferenceSession.run is thread-safe, no per-thread context
    # any batch: a graph exported with a fixed batch pads and splits (inference.run_in_chunks)
    batch_range = (1, None)

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int = 0,
        precision: str = "fp32",
        spin: bool = True,
        spin_between_runs: bool = True,
    ):
        super().__init__(path, providers, threads, spin=spin, spin_between_runs=spin_between_runs)
        self.precision = precision

    def close(self) -> None:
        self.session = None  # ONNX Runtime frees the session with its last reference

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "file": self.path.name,
            "precision": self.precision,
            "providers": self.providers,
            "onnxruntime": ort.__version__,
            "fixed_batch": self.fixed_batch,
            "threads": self.threads,
        }
