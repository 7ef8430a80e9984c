"""Calibration and guard images, read and preprocessed by the shared `preprocess`.

Sources: a dataset root + category (its training normals) or a folder of images (searched
recursively). A seeded shuffle splits the normals into a held-out guard set (used only to
compare fp32 and int8) and the calibration set. Pseudo-anomalous images (the training
synthesis, with the settings the checkpoint was trained with) can join the calibration set,
and always form the anomalous half of the guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmgrd_edge.config import PreprocessConfig, SynthesisConfig
from dmgrd_edge.data.datasets import index_category
from dmgrd_edge.data.imageio import IMAGE_SUFFIXES
from dmgrd_edge.data.preprocess import normalize, read_frames
from dmgrd_edge.data.synthesis import AnomalySynthesizer
from dmgrd_edge.errors import DataError

MIN_RECOMMENDED = 100


@dataclass(kw_only=True)
class CalibrationData:
    calibration: np.ndarray  # uint8 (N, H, W, 3) at model size
    guard_images: np.ndarray  # uint8 (M, H, W, 3): held-out normals, then pseudo-anomalous copies
    guard_labels: np.ndarray
    guard_masks: np.ndarray
    source: str
    n_pseudo: int
    warnings: list[str]
    synthesis: SynthesisConfig

    def summary(self) -> dict:
        return {
            "source": self.source,
            "calibration_images": int(len(self.calibration)),
            "pseudo_anomalous_in_calibration": self.n_pseudo,
            "guard_normal": int((self.guard_labels == 0).sum()),
            "guard_pseudo_anomalous": int((self.guard_labels == 1).sum()),
            "synthesis": self.synthesis.to_dict(),
            "warnings": self.warnings,
        }


def list_source_images(source: Path, dataset: str | None, category: str | None) -> list[Path]:
    if dataset is not None:
        if category is None:
            raise DataError(
                "calibration from a dataset needs a category", "add --calib-category NAME"
            )
        return [s.path for s in index_category(dataset, source, category).train]
    if not source.is_dir():
        raise DataError(
            f"calibration folder not found: {source}",
            "give a folder of good images or a dataset root",
        )
    files = sorted(
        p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DataError(
            f"no images in {source}", f"expected image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def collect(
    source: Path,
    dataset: str | None,
    category: str | None,
    cfg: PreprocessConfig,
    count: int,
    guard_count: int,
    pseudo: bool,
    seed: int = 0,
    progress=None,
    synthesis: SynthesisConfig | None = None,
) -> CalibrationData:
    """``synthesis``: how the pseudo-anomalies are made, the checkpoint's training settings
    (None: the defaults, what a checkpoint from before they were stored was trained with)."""
    files = list_source_images(Path(source), dataset, category)
    order = np.random.default_rng([seed, 11]).permutation(len(files))
    n_guard = min(guard_count // 2, max(2, len(files) // 5))
    if len(files) - n_guard < 1:
        raise DataError(
            f"only {len(files)} images in {source}: too few for calibration plus a guard set",
            "give at least 4 good images",
        )
    guard_files = [files[i] for i in order[:n_guard]]
    calib_files = [files[i] for i in order[n_guard : n_guard + count]]
    warnings = []
    if len(calib_files) < MIN_RECOMMENDED:
        warnings.append(
            f"only {len(calib_files)} calibration images (fewer than {MIN_RECOMMENDED}); "
            "INT8 ranges may not cover the line's variation"
        )
    read = progress or (lambda xs, _: xs)
    calib = read_frames(read(calib_files, "calibration images"), cfg)
    guard = read_frames(read(guard_files, "guard images"), cfg)
    synthesis = synthesis or SynthesisConfig()
    synth = AnomalySynthesizer(cfg.height, cfg.width, config=synthesis)
    rng = np.random.default_rng([seed, 12])
    bad, masks = zip(*(synth(image, rng, calib) for image in guard))
    n_pseudo = 0
    if pseudo:
        n_pseudo = len(calib) // 4
        extra = [
            synth(calib[i], rng, calib)[0] for i in rng.choice(len(calib), n_pseudo, replace=False)
        ]
        calib = np.concatenate([calib, np.stack(extra)]) if extra else calib
    guard_images = np.concatenate([guard, np.stack(bad)])
    labels = np.r_[np.zeros(len(guard), int), np.ones(len(guard), int)]
    guard_masks = np.concatenate([np.zeros(guard.shape[:3], bool), np.stack(masks)])
    where = f"{dataset}:{source}/{category}" if dataset else str(source)
    return CalibrationData(
        calibration=calib,
        guard_images=guard_images,
        guard_labels=labels,
        guard_masks=guard_masks,
        source=where,
        n_pseudo=n_pseudo,
        warnings=warnings,
        synthesis=synthesis,
    )


class CalibrationReader:
    """ONNX Runtime CalibrationDataReader over preprocessed batches ({'image': array}).

    ``set_range`` lets the quantizer collect statistics a few batches at a time (see
    calib/quantize.py): ONNX Runtime keeps every intermediate tensor of the batches it is
    given until it computes their ranges, about 150 MB per 256 px image for this model."""

    def __init__(
        self,
        images: np.ndarray,
        cfg: PreprocessConfig,
        batch_size: int = 1,
        input_name: str = "image",
    ):
        if len(images) == 0:
            raise DataError(
                "the calibration set is empty", "give calibration images with --calib-data"
            )
        self.images, self.cfg, self.batch_size, self.input_name = (
            images,
            cfg,
            batch_size,
            input_name,
        )
        self.rewind()

    def get_next(self):
        if self.position + self.batch_size > self.stop:
            return None
        chunk = self.images[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        batch = normalize(chunk, self.cfg)
        if batch.dtype != np.float32 or batch.shape[1:] != (3, self.cfg.height, self.cfg.width):
            raise DataError(
                f"calibration batch has {batch.dtype} {batch.shape}, expected float32 (N, 3, H, W)"
            )
        return {self.input_name: batch}

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve batches start_index .. end_index - 1 next."""
        self.position = start_index * self.batch_size
        self.stop = min(len(self.images), end_index * self.batch_size)

    def rewind(self) -> None:
        self.position, self.stop = 0, len(self.images)
