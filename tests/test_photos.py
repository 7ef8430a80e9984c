"""The real-photograph evaluation set: deterministic, disjoint train/test material, masks."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from dmgrd_edge.data.datasets import index_category
from dmgrd_edge.data.imageio import read_image, read_mask
from dmgrd_edge.data.photos import (
    DEFECTS,
    TEST_COINS,
    build_photo_set,
    coin_boxes,
    load_photo,
    make_photo_image,
)
from dmgrd_edge.errors import ConfigError, DataError


def _digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    return build_photo_set(
        tmp_path_factory.mktemp("photos") / "set",
        ["brick", "coin"],
        n_train=4,
        n_test_good=2,
        n_test_defect=5,
        size=64,
        seed=3,
    )


def test_the_set_is_byte_identical_when_rebuilt(photo_root, tmp_path):
    again = build_photo_set(
        tmp_path / "again",
        ["brick", "coin"],
        n_train=4,
        n_test_good=2,
        n_test_defect=5,
        size=64,
        seed=3,
    )
    assert _digest(again) == _digest(photo_root) and len(_digest(photo_root)) == 2 * (4 + 2 + 5 + 5)
    other = build_photo_set(
        tmp_path / "other", ["brick"], n_train=4, n_test_good=0, n_test_defect=0, size=64, seed=4
    )
    assert _digest(other) != {
        k: v for k, v in _digest(photo_root).items() if k.startswith("brick/train")
    }


def test_layout_reads_as_mvtec_with_one_mask_per_defect(photo_root):
    for category in ("brick", "coin"):
        index = index_category("mvtec", photo_root, category)
        assert len(index.train) == 4 and sum(s.label for s in index.test) == 5
        assert {s.defect_type for s in index.test if s.label} == set(DEFECTS)
        for sample in index.test:
            image = read_image(sample.path)
            assert image.shape == (64, 64, 3) and image.dtype == np.uint8
            if sample.label:
                mask = read_mask(sample.mask_path)
                assert mask.shape == (64, 64) and 0 < mask.mean() < 0.25


def test_defects_change_the_image_where_the_mask_is():
    from dmgrd_edge.data.photos import _add_defect, _Sampler

    foreign = load_photo("chelsea.png")
    for category in ("gravel", "coin"):
        sampler = _Sampler(category, 128)
        for seed, kind in enumerate(DEFECTS):
            image, allowed = sampler.good(np.random.default_rng(seed), "test")
            before = image.copy()
            tray = float(np.median(image[~allowed])) if category == "coin" else None
            mask = _add_defect(np.random.default_rng(seed), image, allowed, kind, foreign, tray)
            diff = np.abs(image - before).mean(2)
            assert mask.any() and diff[mask].mean() > 10 * diff[~mask].mean() + 2, (category, kind)


def test_training_and_test_material_are_disjoint():
    coins = coin_boxes(load_photo("coins.png"))
    assert len(coins) > TEST_COINS + 8  # enough coins on both sides of the split
    # surfaces: crops of a split never reach into the other split's rows
    rng_rows = set()
    for i in range(20):
        train, _ = make_photo_image("brick", 0, "train", i, 64)
        test, _ = make_photo_image("brick", 0, "test", i, 64)
        rng_rows.add(train.tobytes() == test.tobytes())
    assert rng_rows == {False}


@pytest.mark.fault("option or combination that is not allowed")
def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="choose from"):
        build_photo_set(tmp_path / "x", ["marble"])
    (tmp_path / "exists").mkdir()
    with pytest.raises(DataError, match="already exists"):
        build_photo_set(tmp_path / "exists", ["brick"])
    with pytest.raises(DataError, match="not found"):
        load_photo("no-such-photo.png")
