"""The backend interface shared by ONNX Runtime and TensorRT: ``infer(batch)`` takes a
normalised float32 NCHW batch and returns (anomaly_map [B,1,H,W], score [B]).

The error, the batch check and the chunking live in the core (``dmgrd_edge.inference``),
next to the ONNX Runtime session the calibration guard shares; they are the same objects
here."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from dmgrd_edge.inference import BackendError, check_batch, run_in_chunks

__all__ = ["Backend", "BackendError", "check_batch", "run_in_chunks"]


@runtime_checkable
class Backend(Protocol):
    name: str
    precision: str
    # True: the pipeline may call infer from its inference threads, several at once
    calls_from_any_thread: bool
    # (smallest, largest) batch one call measures as it is, None: no upper bound. `bench`
    # refuses batch sizes outside it (a padded or split call would be timed as another size)
    batch_range: tuple[int, int | None]

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...  # frees the session or engine; the backend is unusable after it
