"""Dataset indexing for MVTec AD, BTAD, VisA (original and MVTec-style) and plain folders.

Indexing only lists files and pairs images with masks; nothing is decoded here, and
nothing imports torch. Each layout raises a DataError naming the missing path and the
layout it expected.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, choose
from ..registry import LAYOUTS
from .imageio import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 anomalous
    defect_type: str = "good"
    mask_path: Path | None = None


@dataclass
class CategoryIndex:
    dataset: str
    root: Path
    category: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    def summary(self) -> str:
        n_bad = sum(s.label for s in self.test)
        return (
            f"{self.dataset}/{self.category}: {len(self.train)} train, "
            f"{len(self.test) - n_bad} test good, {n_bad} test defective"
        )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _need_dir(path: Path, dataset: str) -> Path:
    if not path.is_dir():
        raise DataError(
            f"missing folder {path}", f"expected the {dataset} layout: {LAYOUTS[dataset]}"
        )
    return path


def _find_mask(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem):
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _index_mvtec_like(root: Path, category: str, dataset: str, good: str) -> CategoryIndex:
    base = _need_dir(root / category, dataset)
    index = CategoryIndex(dataset, root, category)
    index.train = [Sample(p, 0) for p in _images(_need_dir(base / "train" / good, dataset))]
    test_dir = _need_dir(base / "test", dataset)
    for type_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        defect = type_dir.name
        for path in _images(type_dir):
            if defect == good:
                index.test.append(Sample(path, 0, "good"))
                continue
            mask = _find_mask(base / "ground_truth" / defect, path.stem)
            if mask is None:
                raise DataError(
                    f"no ground-truth mask for {path}",
                    f"expected {base / 'ground_truth' / defect / (path.stem + '_mask.png')} "
                    f"(layout: {LAYOUTS[dataset]})",
                )
            index.test.append(Sample(path, 1, defect, mask))
    return index


def _visa_rows(root: Path) -> list[dict[str, str]]:
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DataError(f"missing {csv_path}", f"expected the VisA layout: {LAYOUTS['visa']}")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"object", "split", "label", "image", "mask"}
    if not rows or not needed <= set(rows[0]):
        raise DataError(f"{csv_path} lacks the columns {sorted(needed)} or has no rows")
    return rows


def _index_visa(root: Path, category: str) -> CategoryIndex:
    index = CategoryIndex("visa", root, category)
    for row in _visa_rows(root):
        if row["object"] != category:
            continue
        path = root / row["image"]
        if not path.is_file():
            raise DataError(f"image listed in 1cls.csv not found: {path}", LAYOUTS["visa"])
        anomalous = row["label"].strip().lower() == "anomaly"
        mask = root / row["mask"] if anomalous and row["mask"].strip() else None
        if anomalous and (mask is None or not mask.is_file()):
            raise DataError(f"mask listed for {path} not found: {mask}", LAYOUTS["visa"])
        sample = Sample(path, int(anomalous), "bad" if anomalous else "good", mask)
        split = row["split"].strip().lower()
        if split == "train":
            if anomalous:
                raise DataError(f"1cls.csv lists an anomalous training image: {path}")
            index.train.append(sample)
        elif split == "test":
            index.test.append(sample)
    return index


def _index_folder(
    root: Path, category: str, seed: int = 0, test_fraction: float = 0.2
) -> CategoryIndex:
    base = root if category in ("", ".") else root / category
    good = _images(_need_dir(base / "good", "folder"))
    shuffled = good[:]
    random.Random(seed).shuffle(shuffled)
    n_test = max(1, int(round(len(good) * test_fraction))) if len(good) > 1 else 0
    index = CategoryIndex("folder", root, category)
    index.test = [Sample(p, 0) for p in sorted(shuffled[:n_test])]
    index.train = [Sample(p, 0) for p in sorted(shuffled[n_test:])]
    for type_dir in sorted(
        d for d in base.iterdir() if d.is_dir() and d.name not in ("good", "masks")
    ):
        for path in _images(type_dir):
            mask = _find_mask(base / "masks" / type_dir.name, path.stem)
            index.test.append(Sample(path, 1, type_dir.name, mask))
    return index


def list_categories(dataset: str, root: str | Path) -> list[str]:
    """Categories present under ``root`` for ``dataset``."""
    choose("dataset", dataset, LAYOUTS)
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dataset root not found: {root}", f"expected the {dataset} layout: {LAYOUTS[dataset]}"
        )
    if dataset == "visa":
        return sorted({row["object"] for row in _visa_rows(root)})
    if dataset == "folder":
        if (root / "good").is_dir():
            return ["."]
        return sorted(d.name for d in root.iterdir() if (d / "good").is_dir())
    good = "ok" if dataset == "btad" else "good"
    cats = sorted(d.name for d in root.iterdir() if (d / "train" / good).is_dir())
    if not cats:
        raise DataError(
            f"no categories found under {root}",
            f"expected the {dataset} layout: {LAYOUTS[dataset]}",
        )
    return cats


def index_category(dataset: str, root: str | Path, category: str) -> CategoryIndex:
    """List the train and test samples of one category, checking the layout."""
    choose("dataset", dataset, LAYOUTS)
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dataset root not found: {root}", f"expected the {dataset} layout: {LAYOUTS[dataset]}"
        )
    if dataset in ("mvtec", "visa_mvtec"):
        index = _index_mvtec_like(root, category, dataset, "good")
    elif dataset == "btad":
        index = _index_mvtec_like(root, category, dataset, "ok")
    elif dataset == "visa":
        index = _index_visa(root, category)
    else:
        index = _index_folder(root, category)
    if not index.train:
        raise DataError(
            f"category {category!r} of {root} has no training images",
            f"expected the {dataset} layout: {LAYOUTS[dataset]}",
        )
    return index


def resolve_categories(dataset: str, root: str | Path, category: str) -> list[str]:
    """Expand ``all`` or a comma list into checked category names."""
    available = list_categories(dataset, root)
    if category == "all":
        return available
    wanted = [c.strip() for c in category.split(",") if c.strip()]
    for name in wanted:
        if name not in available:
            raise DataError(
                f"category {name!r} not found under {root}", f"choose from {available} or 'all'"
            )
    return wanted
