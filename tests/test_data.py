"""Image reading, the shared preprocess, dataset layouts and the synthetic generator."""

import cv2
import numpy as np
import pytest

from conftest import write_png
from dmgrd_edge.config import PreprocessConfig
from dmgrd_edge.data import preprocess, read_image, read_mask
from dmgrd_edge.data.datasets import index_category, list_categories, resolve_categories
from dmgrd_edge.data.preprocess import denormalize
from dmgrd_edge.data.synthetic import DEFECTS, generate_line_data, make_image
from dmgrd_edge.errors import ConfigError, DataError


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)


def test_gray_rgba_and_16bit_are_converted_consistently(tmp_path, rgb):
    gray = rgb[:, :, 0]
    write_png(tmp_path / "gray.png", gray)
    write_png(tmp_path / "gray16.png", gray.astype(np.uint16) * 257)
    bgra = np.dstack([rgb[:, :, ::-1], np.full(gray.shape, 7, np.uint8)])
    write_png(tmp_path / "rgba.png", bgra)
    write_png(tmp_path / "rgb.png", rgb[:, :, ::-1])
    expected_gray = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), expected_gray)
    np.testing.assert_array_equal(read_image(tmp_path / "gray16.png"), expected_gray)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)


@pytest.mark.fault("image file corrupt or truncated")
def test_truncated_and_corrupt_files_are_named(tmp_path, rgb):
    png = write_png(tmp_path / "a.png", rgb)
    png.write_bytes(png.read_bytes()[:-30])
    with pytest.raises(DataError, match="truncated PNG.*a.png"):
        read_image(png)
    ok, buf = cv2.imencode(".jpg", rgb)
    jpg = tmp_path / "b.jpg"
    jpg.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(DataError, match="truncated JPEG.*b.jpg"):
        read_image(jpg)
    junk = tmp_path / "c.png"
    junk.write_bytes(b"not an image at all" + b"IEND\xaeB`\x82")
    with pytest.raises(DataError, match="cannot decode"):
        read_image(junk)
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_preprocess_normalises_and_round_trips(rgb):
    cfg = PreprocessConfig(height=64, width=32)
    x = preprocess([rgb, rgb], cfg)
    assert x.shape == (2, 3, 64, 32) and x.dtype == np.float32
    resized = cv2.resize(rgb, (32, 64), interpolation=cv2.INTER_LINEAR)
    expected = (resized[0, 0, 0] / 255.0 - cfg.mean[0]) / cfg.std[0]
    assert x[0, 0, 0, 0] == pytest.approx(expected, abs=1e-5)
    back = denormalize(x, cfg)
    assert np.abs(back[0].astype(int) - resized.astype(int)).max() <= 1


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_normalize_matches_the_textbook_formula(order):
    from dmgrd_edge.data.preprocess import normalize

    cfg = PreprocessConfig(height=32, width=64, color_order=order)
    batch = np.random.default_rng(0).integers(0, 256, size=(3, 32, 64, 3), dtype=np.uint8)
    channels = batch[..., ::-1] if order == "BGR" else batch
    expected = ((channels / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)).transpose(0, 3, 1, 2)
    got = normalize(batch, cfg)
    assert got.shape == (3, 3, 32, 64) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


@pytest.mark.fault("input shape or batch the model cannot take")
def test_preprocess_rejects_wrong_shape():
    with pytest.raises(DataError, match="RGB uint8"):
        preprocess(np.zeros((8, 8), np.uint8), PreprocessConfig(height=32, width=32))


def test_mvtec_layout(line_root):
    assert list_categories("mvtec", line_root) == ["washer", "woven_fabric"]
    index = index_category("mvtec", line_root, "washer")
    assert len(index.train) == 12
    bad = [s for s in index.test if s.label]
    assert len(bad) == 2 * len(DEFECTS) and all(s.mask_path and s.mask_path.is_file() for s in bad)
    assert {s.defect_type for s in bad} == set(DEFECTS)
    assert resolve_categories("mvtec", line_root, "all") == ["washer", "woven_fabric"]
    with pytest.raises(DataError, match="choose from"):
        resolve_categories("mvtec", line_root, "bottle")


@pytest.mark.fault("dataset folder missing, empty or without masks")
def test_missing_mask_and_folder_errors(tmp_path, line_root):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(line_root / "washer", copy / "washer")
    next((copy / "washer" / "ground_truth" / "spot").iterdir()).unlink()
    with pytest.raises(DataError, match="no ground-truth mask"):
        index_category("mvtec", copy, "washer")
    with pytest.raises(DataError, match="missing folder.*bottle"):
        index_category("mvtec", copy, "bottle")
    with pytest.raises(DataError, match="dataset root not found"):
        index_category("mvtec", tmp_path / "nowhere", "washer")
    with pytest.raises(ConfigError, match="choose one of"):
        index_category("kolektor", copy, "washer")


@pytest.mark.fault("dataset folder missing, empty or without masks")
def test_empty_category(tmp_path):
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    (tmp_path / "cat" / "test").mkdir()
    with pytest.raises(DataError, match="no training images"):
        index_category("mvtec", tmp_path, "cat")


def test_btad_layout(tmp_path, rgb):
    root = tmp_path / "btad"
    for i in range(3):
        write_png(root / "01" / "train" / "ok" / f"{i:04d}.bmp", rgb)
    write_png(root / "01" / "test" / "ok" / "0000.bmp", rgb)
    write_png(root / "01" / "test" / "ko" / "0001.bmp", rgb)
    write_png(
        root / "01" / "ground_truth" / "ko" / "0001.png",
        (rgb[:, :, 0] > 128).astype(np.uint8) * 255,
    )
    assert list_categories("btad", root) == ["01"]
    index = index_category("btad", root, "01")
    assert len(index.train) == 3
    assert [(s.label, s.defect_type) for s in index.test] == [(1, "ko"), (0, "good")]
    assert read_mask(index.test[0].mask_path).dtype == bool


def test_visa_original_layout(tmp_path, rgb):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for i in range(3):
        write_png(root / "candle" / "Data" / "Images" / "Normal" / f"{i:04d}.JPG", rgb)
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    write_png(root / "candle" / "Data" / "Images" / "Anomaly" / "000.JPG", rgb)
    write_png(root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png", rgb[:, :, 0])
    rows.append(
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png"
    )
    rows.append("candle,test,normal,candle/Data/Images/Normal/0000.JPG,")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    assert list_categories("visa", root) == ["candle"]
    index = index_category("visa", root, "candle")
    assert len(index.train) == 3 and [s.label for s in index.test] == [1, 0]
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    with pytest.raises(DataError, match="mask listed"):
        index_category("visa", root, "candle")


def test_visa_converted_layout_masks_without_suffix(tmp_path, rgb):
    root = tmp_path / "visa_conv"
    for i in range(2):
        write_png(root / "pcb1" / "train" / "good" / f"{i:03d}.JPG", rgb)
    write_png(root / "pcb1" / "test" / "bad" / "000.JPG", rgb)
    write_png(root / "pcb1" / "ground_truth" / "bad" / "000.png", rgb[:, :, 0])
    index = index_category("visa_mvtec", root, "pcb1")
    assert index.test[0].mask_path.name == "000.png"


def test_folder_layout(tmp_path, rgb):
    root = tmp_path / "folder"
    for i in range(10):
        write_png(root / "good" / f"{i}.png", rgb)
    write_png(root / "dent" / "d0.png", rgb)
    write_png(root / "masks" / "dent" / "d0.png", rgb[:, :, 0])
    index = index_category("folder", root, ".")
    assert len(index.train) == 8 and sum(s.label == 0 for s in index.test) == 2
    defect = [s for s in index.test if s.label]
    assert (
        len(defect) == 1
        and defect[0].defect_type == "dent"
        and defect[0].mask_path.name == "d0.png"
    )


def test_synthetic_is_seeded_and_masks_match():
    a, mask_a = make_image("chip", 3, "test", 1, 64, "foreign")
    b, mask_b = make_image("chip", 3, "test", 1, 64, "foreign")
    np.testing.assert_array_equal(a, b)
    assert mask_a.any() and (mask_a == mask_b).all()
    good, _ = make_image("chip", 3, "test", 1, 64)
    assert np.abs(a.astype(int) - good.astype(int))[mask_a].mean() > 10  # the defect is visible
    with pytest.raises(ConfigError, match="choose one of"):
        make_image("bottle", 0, "train", 0)


@pytest.mark.fault("existing output kept, never overwritten")
def test_generator_never_overwrites(tmp_path):
    out = generate_line_data(
        tmp_path / "d", ["granite"], n_train=2, n_test_good=1, n_test_per_defect=1, size=32
    )
    marker = out / "keep.txt"
    marker.write_text("x")
    with pytest.raises(DataError, match="already exists"):
        generate_line_data(out, ["granite"], n_train=2, size=32)
    assert marker.read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize(
    "channels, bgr", [(None, True), (1, True), (3, True), (3, False), (4, True), (4, False)]
)
def test_to_rgb8_matches_channel_slicing(channels, bgr):
    """OpenCV's conversions give the bytes of the plain numpy definition: gray repeated, alpha
    dropped, BGR reversed."""
    from dmgrd_edge.data.imageio import to_rgb8

    rng = np.random.default_rng(channels or 0)
    shape = (7, 5) if channels is None else (7, 5, channels)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    hwc = image[:, :, None] if image.ndim == 2 else image
    expected = np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else hwc[:, :, :3]
    if bgr and hwc.shape[2] != 1:
        expected = expected[:, :, ::-1]
    got = to_rgb8(image, bgr=bgr)
    assert got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"] and np.array_equal(got, expected)
    wide = to_rgb8(image.astype(np.uint16) * 257, bgr=bgr)  # 16-bit input scales back exactly
    assert np.array_equal(wide, expected)
