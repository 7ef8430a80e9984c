"""Faults and hostile files, continued from tests/test_reliability.py: a bundle commit killed
at every step, links in a bundle, decode limits, masks of the wrong size, typed checkpoint
metadata and bench/eval JSON. Real files, real subprocesses killed with SIGKILL."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_reliability import PROPERTY, cli, mutated, refused

from dmgrd_edge import bundle as bundle_module
from dmgrd_edge.bundle import (
    COMMIT_STEPS,
    KILL_AT_STEP_ENV,
    MANIFEST,
    BundleError,
    load_bundle,
    release_staging,
    staging_dir,
)
from dmgrd_edge.schema import checkpoint_meta


@pytest.fixture(scope="module")
def bundle(fp32_bundle) -> Path:
    return fp32_bundle


def stamped(source: Path, to: Path, created: str) -> Path:
    shutil.copytree(source, to)
    manifest = json.loads((to / MANIFEST).read_text())
    manifest["created"] = created
    (to / MANIFEST).write_text(json.dumps(manifest))
    return to


# what an export does at its end, in a process of its own
COMMIT = """
import json, shutil, sys
from pathlib import Path
from dmgrd_edge.bundle import MANIFEST, commit_bundle, release_staging, staging_dir
src, out = Path(sys.argv[1]), Path(sys.argv[2])
manifest = json.loads((src / MANIFEST).read_text())
manifest["created"] = "new"
staging = staging_dir(out)
try:
    for name in manifest["files"]:
        shutil.copyfile(src / name, staging / name)
    commit_bundle(staging, out, manifest)
finally:
    release_staging(staging)
"""


def commit(src: Path, out: Path, kill_at: int | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_STEP_ENV}
    if kill_at is not None:
        env[KILL_AT_STEP_ENV] = str(kill_at)
    return subprocess.run(
        [sys.executable, "-c", COMMIT, str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


@pytest.mark.fault("bundle commit killed (SIGKILL) at each step")
@pytest.mark.parametrize(
    "step, old",
    [
        pytest.param(step, old, id=f"{name}-{'over-an-old-bundle' if old else 'new-out'}")
        for step, name in enumerate(COMMIT_STEPS)
        for old in (True, False)
        if old or name != "half of the old bundle removed"
    ],
)
def test_a_commit_killed_at_any_step_leaves_a_whole_bundle_and_the_next_export_cleans_up(
    tmp_path, bundle, step, old
):
    out = tmp_path / "site" / "b"
    out.parent.mkdir()
    if old:
        stamped(bundle, out, "old")
    result = commit(bundle, out, kill_at=step)
    assert result.returncode == -signal.SIGKILL, result.stderr
    swapped = step >= COMMIT_STEPS.index("new bundle in place")
    if old or swapped:
        loaded = load_bundle(out)  # verifies every file's size and sha256
        assert loaded.manifest["created"] == ("new" if swapped else "old")
    else:
        assert not os.path.lexists(out)
    left = siblings(out)
    if step < len(COMMIT_STEPS) - 1:
        assert any(name.endswith(".lock") for name in left), left  # a killed run's leftovers
    # the next export removes them, and commits
    assert commit(bundle, out, kill_at=None).returncode == 0
    assert siblings(out) == []
    assert load_bundle(out).manifest["created"] == "new"


@pytest.mark.fault("staging folders of a running export or of others are kept")
def test_cleanup_keeps_a_staging_folder_in_use_and_folders_that_are_not_ours(tmp_path, bundle):
    out = tmp_path / "b"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom dmgrd_edge.bundle import staging_dir\n"
            f"print(staging_dir({str(out)!r}), flush=True)\nsys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        busy = Path(holder.stdout.readline().strip())
        assert busy.is_dir()
        foreign = tmp_path / ".b.staging-by-hand"
        foreign.mkdir()
        mine = staging_dir(out)  # a second export to the same --out
        assert busy.is_dir() and Path(f"{busy}.lock").is_file() and foreign.is_dir()
        release_staging(mine)
        assert not mine.exists() and not Path(f"{mine}.lock").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    staging_dir(out)  # its holder gone: a leftover like any killed run's
    assert not busy.exists() and foreign.is_dir()


@pytest.mark.fault("file system that cannot swap folders")
def test_without_an_atomic_swap_the_old_bundle_is_kept_with_a_clear_error(
    tmp_path, bundle, monkeypatch
):
    out = stamped(bundle, tmp_path / "b", "old")

    def unsupported(a, b):
        raise bundle_module.ExchangeUnsupported(22, "Invalid argument")

    monkeypatch.setattr(bundle_module, "exchange", unsupported)
    manifest = json.loads((bundle / MANIFEST).read_text())
    staging = staging_dir(out)
    try:
        shutil.copyfile(bundle / "model.onnx", staging / "model.onnx")
        with pytest.raises(BundleError, match="in one step") as exc:
            bundle_module.commit_bundle(staging, out, manifest)
        assert "new --out" in exc.value.fix
    finally:
        release_staging(staging)
    assert load_bundle(out).manifest["created"] == "old" and siblings(out) == []


# links in a bundle ----------------------------------------------------------------------


def _link_model(root: Path, outside: Path) -> None:
    shutil.copyfile(root / "model.onnx", outside / "model.onnx")
    (root / "model.onnx").unlink()
    (root / "model.onnx").symlink_to(outside / "model.onnx")


def _link_manifest(root: Path, outside: Path) -> None:
    shutil.copyfile(root / MANIFEST, outside / MANIFEST)
    (root / MANIFEST).unlink()
    (root / MANIFEST).symlink_to(outside / MANIFEST)


def _link_folder(root: Path, outside: Path) -> None:
    """The model in a subfolder that is a link to a folder outside the bundle."""
    (outside / "models").mkdir()
    shutil.move(root / "model.onnx", outside / "models" / "model.onnx")
    (root / "models").symlink_to(outside / "models", target_is_directory=True)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"]["models/model.onnx"] = manifest["files"].pop("model.onnx")
    (root / MANIFEST).write_text(json.dumps(manifest))


def _link_inside(root: Path, outside: Path) -> None:
    """Even a link to a file inside the bundle: a bundle is a folder of files."""
    (root / "model.onnx").rename(root / "real.onnx")
    (root / "model.onnx").symlink_to("real.onnx")


@pytest.mark.fault("symbolic link in a bundle (hash matching)")
@pytest.mark.parametrize("make", [_link_model, _link_manifest, _link_folder, _link_inside])
def test_a_linked_model_file_or_manifest_is_refused_even_when_its_hash_matches(
    tmp_path, bundle, make
):
    root = shutil.copytree(bundle, tmp_path / "b")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    make(root, outside)
    with pytest.raises(BundleError, match="symbolic link") as exc:
        load_bundle(root)
    assert "cp -rL" in exc.value.fix
    with pytest.raises(BundleError, match="symbolic link"):  # the runtime's own reads too
        loaded = load_bundle(root, verify=False)
        for name in loaded.manifest["files"]:
            loaded.path(name)


@pytest.mark.fault("symbolic link in a bundle (hash matching)")
def test_run_refuses_a_bundle_whose_model_is_a_link_out_of_it(tmp_path, bundle):
    root = shutil.copytree(bundle, tmp_path / "b")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _link_model(root, outside)
    frames = tmp_path / "frames"
    frames.mkdir()
    result = cli("run", root, "--source", frames, "--headless")
    refused(result, "symbolic link", "model.onnx")


# decode limits ----------------------------------------------------------------------------


def huge_png(path: Path, width: int = 25_000, height: int = 25_000) -> Path:
    """A valid 1-bit PNG of one colour, written row by row: about 80 KB on disk, 625 MB as
    8-bit grey and 1.9 GB as RGB once decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the row's bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> Path:
    return huge_png(tmp_path_factory.mktemp("huge") / "huge.png")


READ_HUGE = """
import sys
from dmgrd_edge.errors import DataError
from dmgrd_edge.data.imageio import read_image, read_mask
for read in (read_image, read_mask):
    try:
        read(sys.argv[1])
        print("decoded")
    except DataError as exc:
        print("refused:", exc.problem)
# the peak of this process's own memory (ru_maxrss would include the parent's before exec)
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("peak_kib", peak)
"""


@pytest.mark.fault("image above the decode limit (small file, huge size)")
def test_a_small_png_of_huge_size_is_refused_before_decoding(huge):
    import zlib

    assert huge.stat().st_size < 1_000_000
    data = huge.read_bytes()
    assert data[12:16] == b"IHDR" and data[16:24] == (25_000).to_bytes(4, "big") * 2
    assert len(zlib.decompress(data[41:-12])) == 25_000 * (1 + 3125)  # every row is there
    result = subprocess.run(
        [sys.executable, "-c", READ_HUGE, str(huge)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in lines[:2]] == ["refused", "refused"], lines
    assert "25000 x 25000" in lines[0] and "decode limit" in lines[0]
    peak_mib = int(lines[2].split()[1]) / 1024
    assert peak_mib < 400, peak_mib  # decoding it takes 625 MB at the least


@pytest.mark.fault("image above the decode limit (small file, huge size)")
def test_training_calibration_and_evaluation_loaders_refuse_it(huge, tmp_path):
    from dmgrd_edge.train.loop import load_images

    from dmgrd_edge.config import PreprocessConfig
    from dmgrd_edge.errors import DataError

    with pytest.raises(DataError, match="decode limit"):
        load_images([huge], PreprocessConfig())


@pytest.mark.fault("image above the decode limit (small file, huge size)")
def test_run_on_a_folder_of_huge_images_ends_with_a_source_error(bundle, huge, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copyfile(huge, frames / "a.png")
    result = cli("run", bundle, "--source", frames, "--headless")
    err = " ".join(result.stderr.split())
    assert result.returncode == 3, err
    assert "decode limit" in err and "Traceback" not in err, err


@pytest.mark.fault("image above the decode limit (small file, huge size)")
def test_the_decode_limit_is_configurable_and_checked(tmp_path, monkeypatch):
    import cv2
    import numpy as np
    from dmgrd_edge.runtime.sources import SourceError, VideoCaptureSource, parse_uri

    from dmgrd_edge.data.imageio import MAX_PIXELS_ENV, read_image
    from dmgrd_edge.errors import ConfigError, DataError

    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((64, 48, 3), np.uint8))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (48, 64))
    writer.write(np.zeros((64, 48, 3), np.uint8))
    writer.release()
    assert read_image(path).shape == (64, 48, 3)
    VideoCaptureSource(parse_uri(str(video))).close()
    monkeypatch.setenv(MAX_PIXELS_ENV, str(64 * 48 - 1))
    with pytest.raises(DataError, match="48 x 64 = 3072 pixels"):
        read_image(path)
    with pytest.raises(SourceError, match="decode limit"):  # from the container's header
        VideoCaptureSource(parse_uri(str(video)))
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=MAX_PIXELS_ENV):
        read_image(path)


# masks of the wrong size --------------------------------------------------------------------


def _dataset_with_a_wrong_mask(line_root: Path, to: Path) -> tuple[Path, Path, Path]:
    import cv2

    root = shutil.copytree(line_root, to)
    mask = sorted((root / "washer" / "ground_truth").rglob("*_mask.png"))[0]
    image = root / "washer" / "test" / mask.parent.name / (mask.name.replace("_mask", ""))
    assert image.is_file()
    small = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(mask), cv2.resize(small, (small.shape[1] // 2, small.shape[0] // 2)))
    return root, mask, image


@pytest.mark.fault("mask of another size than its image")
def test_a_mask_whose_size_differs_from_its_image_is_refused_naming_both(line_root, tmp_path):
    from dmgrd_edge.data.imageio import read_mask_of
    from dmgrd_edge.errors import DataError

    _, mask, image = _dataset_with_a_wrong_mask(line_root, tmp_path / "data")
    with pytest.raises(DataError) as exc:
        read_mask_of(mask, image)
    assert str(mask) in exc.value.problem and str(image) in exc.value.problem
    assert "32 x 32" in exc.value.problem and "64 x 64" in exc.value.problem


@pytest.mark.fault("mask of another size than its image")
def test_eval_and_bench_refuse_a_mask_of_another_size(line_root, trained_ckpt, bundle, tmp_path):
    root, mask, image = _dataset_with_a_wrong_mask(line_root, tmp_path / "data")
    result = cli("eval", trained_ckpt, "--data", root, "--out", tmp_path / "ev", torch=True)
    refused(result, str(mask), str(image))
    assert not (tmp_path / "ev" / "report.json").exists()
    out = tmp_path / "bench.json"
    result = cli("bench", bundle, "--data", root, "--category", "washer", "--out", out)
    err = " ".join(result.stderr.split())
    assert result.returncode == 2 and str(mask) in err and "Traceback" not in err, err
    assert not out.exists()


# typed checkpoint metadata and bench JSON ---------------------------------------------------

BENCH = (
    Path(__file__).parent.parent / "benchmarks" / "results" / "tradeoff" / "bench_lite0_int8.json"
)


def _checkpoint(trained_ckpt: Path, to: Path, edit) -> Path:
    import torch

    payload = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    edit(payload)
    torch.save(payload, to)
    return to


CHECKPOINT_EDITS = {
    "no model_config": (lambda p: p.pop("model_config"), "lacks the field 'model_config'"),
    "no metadata": (lambda p: p.pop("metadata"), "lacks the field 'metadata'"),
    "string format version": (lambda p: p.update(format_version="1"), "format_version"),
    "bool format version": (lambda p: p.update(format_version=True), "format_version"),
    "metadata a list": (lambda p: p.update(metadata=[]), "must be an object"),
    "threshold text": (
        lambda p: p["metadata"]["score_stats"].update(threshold="0.5"),
        "score_stats.threshold",
    ),
    "threshold NaN": (
        lambda p: p["metadata"]["score_stats"].update(threshold=float("nan")),
        "score_stats.threshold",
    ),
    "negative std": (lambda p: p["metadata"]["score_stats"].update(std=-1.0), "std"),
    "category a number": (lambda p: p["metadata"].update(category=3), "metadata.category"),
    "negative step": (lambda p: p.update(step=-2), "step"),
    "model_config wrong": (
        lambda p: p["model_config"].update(image_size="big"),
        "model_config",
    ),
}


@pytest.mark.fault("checkpoint with damaged or mistyped fields")
@pytest.mark.parametrize("edit", list(CHECKPOINT_EDITS))
def test_a_damaged_checkpoint_is_refused_with_the_field(trained_ckpt, tmp_path, edit):
    from dmgrd_edge.train.checkpoint import read_checkpoint

    from dmgrd_edge.errors import CheckpointError

    change, needle = CHECKPOINT_EDITS[edit]
    path = _checkpoint(trained_ckpt, tmp_path / "last.pt", change)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(path)
    assert needle in exc.value.problem and exc.value.fix, exc.value.problem


@pytest.mark.fault("checkpoint with damaged or mistyped fields")
@pytest.mark.parametrize("command", ["eval", "export"])
def test_eval_and_export_of_a_checkpoint_without_model_config_end_cleanly(
    trained_ckpt, tmp_path, command
):
    path = _checkpoint(trained_ckpt, tmp_path / "last.pt", lambda p: p.pop("model_config"))
    args = ["--out", tmp_path / "out"]
    refused(cli(command, path, *args, torch=True), "model_config")
    assert not (tmp_path / "out").exists()


@pytest.mark.fault("eval or bench on an empty test split")
def test_eval_on_an_empty_test_split_ends_with_a_clear_error(line_root, trained_ckpt, tmp_path):
    root = shutil.copytree(line_root, tmp_path / "data")
    for image in (root / "washer" / "test").rglob("*.png"):
        image.unlink()
    result = cli("eval", trained_ckpt, "--data", root, "--out", tmp_path / "ev", torch=True)
    refused(result, "no test images")


BENCH_EDITS = {
    "latency a dict": (lambda d: d.update(latency={"batch": 1}), "latency"),
    "batch text": (lambda d: d["latency"][0].update(batch="1"), "latency[0].batch"),
    "p50 NaN": (lambda d: d["latency"][0].update(ms_p50=float("nan")), "ms_p50"),
    "p50 missing": (lambda d: d["latency"][0].pop("ms_p50"), "ms_p50"),
    "throughput 0": (lambda d: d["latency"][0].update(images_per_s=0), "images_per_s"),
    "accuracy a list": (lambda d: d.update(accuracy=[0.9]), "accuracy"),
    "AUROC above 1": (lambda d: d.update(accuracy={"i_auroc": 2.0}), "i_auroc"),
    "backend a string": (lambda d: d.update(backend="onnxruntime"), "backend"),
    "providers text": (lambda d: d["backend"].update(providers="CPU"), "providers"),
    "device a list": (lambda d: d.update(device=[]), "device"),
    "power mode a number": (
        lambda d: d.update(device={"jetson": {"nvpmodel": 7}}),
        "nvpmodel",
    ),
    "image size text": (lambda d: d["model"].update(image_size="256"), "image_size"),
    "rss text": (lambda d: d.update(peak_host_rss_mib="12"), "peak_host_rss_mib"),
    "label a number": (lambda d: d.update(label=5), "label"),
    "pruning ratio text": (lambda d: d.update(pruning={"ratio": "half"}), "ratio"),
}


@pytest.mark.fault("bench JSON with mistyped fields (report)")
@pytest.mark.parametrize("edit", list(BENCH_EDITS))
def test_a_type_mangled_bench_result_is_refused_with_the_field(tmp_path, edit):
    from dmgrd_edge.errors import DataError
    from dmgrd_edge.tradeoff import load_result

    change, needle = BENCH_EDITS[edit]
    data = json.loads(BENCH.read_text())
    load_result(BENCH)  # the real one reads
    change(data)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as exc:
        load_result(path)
    assert needle in exc.value.problem and exc.value.fix, exc.value.problem


@pytest.mark.fault("bench JSON with mistyped fields (report)")
def test_report_on_a_type_mangled_bench_result_exits_cleanly(tmp_path):
    data = json.loads(BENCH.read_text())
    data["latency"][0]["ms_p50"] = "fast"
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    refused(cli("report", BENCH, path, "--out", tmp_path / "rep"), "ms_p50")
    assert not (tmp_path / "rep").exists()


# properties: any checkpoint metadata or bench JSON reads or is refused cleanly -----------


@pytest.fixture(scope="module")
def checkpoint_fields(trained_ckpt) -> dict:
    """The checkpoint's fields other than the tensors, as plain data."""
    import torch

    payload = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    payload.pop("optimizer", None)
    payload["state_dict"] = {}
    return json.loads(json.dumps(payload))


@pytest.mark.fault("property: any checkpoint field edit")
@PROPERTY
@given(data=st.data())
def test_any_edit_of_a_checkpoints_fields_reads_or_is_refused_cleanly(checkpoint_fields, data):
    from dmgrd_edge.errors import CheckpointError
    from dmgrd_edge.schema import checkpoint_payload

    edited = data.draw(mutated(checkpoint_fields))
    try:
        checkpoint_payload(edited, "last.pt", "dmgrd-edge-checkpoint", 1)
    except CheckpointError as exc:
        assert exc.problem and exc.fix
        return
    meta = checkpoint_meta(edited["metadata"])
    assert isinstance(meta.dataset, str) and isinstance(meta.category, str)
    if meta.score_stats is not None:
        assert math.isfinite(meta.score_stats.threshold) and meta.score_stats.std >= 0


@pytest.mark.fault("property: any bench JSON edit")
@PROPERTY
@given(data=st.data())
def test_any_edit_of_a_bench_result_reads_or_is_refused_cleanly(tmp_path_factory, data):
    from dmgrd_edge.errors import DataError
    from dmgrd_edge.tradeoff import load_result, mark_pareto, recommend, to_csv, to_markdown

    edited = data.draw(mutated(json.loads(BENCH.read_text())))
    path = tmp_path_factory.mktemp("bench", numbered=True) / "bench.json"
    path.write_text(json.dumps(edited))
    try:
        variant = load_result(path)
    except DataError as exc:
        assert exc.problem and exc.fix
        return
    assert math.isfinite(variant.ms_b1_p50) and variant.best_images_per_s > 0
    mark_pareto([variant], "pro_30")  # the report is made from it
    to_markdown([variant], recommend([variant], "pro_30", 1.0), "pro_30", 1.0)
    to_csv([variant])


# memory over a shift ---------------------------------------------------------------------


@pytest.mark.fault("memory that grows with the frames of a shift")
def test_a_long_recording_keeps_a_few_bytes_per_frame_for_its_index(tmp_path):
    """The AVI index of a segment (up to 1 GiB, ~700,000 frames of 64 px) is kept in a file
    beside it until the close, not in memory, where a list of tuples took about 124 bytes a
    frame; the index is written at the close and read back."""
    import tracemalloc

    import cv2
    import numpy as np
    from dmgrd_edge.runtime.avi import _Segment

    ok, jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    segment = _Segment(tmp_path / "a.avi", 8, 8, 25.0)
    frames = 20_000
    tracemalloc.start()
    try:
        for _ in range(frames):
            segment.write(jpeg.tobytes())
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        segment.close()
    assert held / frames < 20, held / frames
    cap = cv2.VideoCapture(str(tmp_path / "a.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    cap.release()
