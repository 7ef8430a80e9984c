"""The backend interface shared by ONNX Runtime and TensorRT: ``infer(batch)`` takes a
normalised float32 NCHW batch and returns (anomaly_map [B,1,H,W], score [B])."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from dmgrd_edge.errors import DmgrdError


class BackendError(DmgrdError):
    """A backend that cannot be created or does not match the bundle."""


class Backend(Protocol):
    name: str
    precision: str
    calls_from_any_thread: bool  # True: the pipeline may call infer from its inference threads, several at once

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...  # frees the session or engine; the backend is unusable after it


def check_batch(batch: np.ndarray, height: int, width: int) -> np.ndarray:
    if batch.ndim != 4 or batch.shape[1:] != (3, height, width):
        raise BackendError(f"input batch has shape {batch.shape}, the model takes (N, 3, {height}, {width})",
                           "preprocess frames with dmgrd_edge.data.preprocess and the bundle's parameters")
    if batch.dtype != np.float32:
        batch = batch.astype(np.float32)
    return np.ascontiguousarray(batch)


def run_in_chunks(run, batch: np.ndarray, fixed: int | None, max_batch: int | None):
    """Split/pad ``batch`` for models with a fixed or bounded batch size."""
    size = fixed or max_batch or len(batch)
    maps, scores = [], []
    for i in range(0, len(batch), size):
        chunk = batch[i:i + size]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n,) + chunk.shape[1:], chunk.dtype)])
        amap, score = run(chunk)
        maps.append(amap[:n])
        scores.append(score[:n])
    return np.concatenate(maps), np.concatenate(scores)
