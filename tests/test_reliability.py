"""Hard to break: thresholds and manifests that cannot decide, the decision rule against
calibration, writes that would replace something other than a regular file, numbers out
of range, bounded latency statistics and sources with no readable frame. Real bundles,
real ONNX Runtime sessions, real files; the CLI runs in a subprocess as on the line."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dmgrd_edge.bundle import BundleError, load_bundle
from dmgrd_edge.data.synthetic import make_image
from dmgrd_edge.errors import DmgrdError


@pytest.fixture(scope="module")
def bundle(fp32_bundle) -> Path:
    return fp32_bundle


def cli(*args, timeout: float = 180, torch: bool = False) -> subprocess.CompletedProcess:
    """`dmgrd-edge ARGS` in a fresh interpreter, without torch (as on the line) unless asked."""
    code = ("import sys; sys.modules['torch'] = None\n" if not torch else "import sys\n") + (
        f"sys.argv = ['dmgrd-edge'] + {list(map(str, args))!r}\n"
        "from dmgrd_edge.cli import main\nmain()"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )


def refused(result: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    """Exit ``code`` with an `error:` line and a `fix:` line, no traceback, and no model
    loaded (the refusal came before any work)."""
    err = " ".join(result.stderr.split())
    assert result.returncode == code, (result.returncode, err)
    assert "error:" in err and "fix:" in err and "Traceback" not in err, err
    assert "backend:" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def copy_bundle(bundle: Path, to: Path, edit=None) -> Path:
    shutil.copytree(bundle, to)
    if edit is not None:
        manifest = json.loads((to / "manifest.json").read_text())
        edit(manifest)
        (to / "manifest.json").write_text(json.dumps(manifest))
    return to


def good_frames(folder: Path, count: int, same: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = make_image("washer", 5, "video", 0 if same else i, 64)
        assert cv2.imwrite(str(folder / f"{i:03d}.png"), np.ascontiguousarray(image[:, :, ::-1]))
    return folder


# 1. thresholds that cannot decide ------------------------------------------------------


@pytest.mark.fault("threshold that is NaN or infinite")
@pytest.mark.parametrize(
    "option, value",
    [
        ("--threshold", "nan"),
        ("--threshold", "inf"),
        ("--pixel-threshold", "nan"),
        ("--pixel-threshold", "-inf"),
    ],
)
def test_run_refuses_a_threshold_that_is_not_a_finite_number(tmp_path, bundle, option, value):
    frames = good_frames(tmp_path / "good", 2)
    refused(
        cli("run", bundle, "--source", frames, "--headless", option, value), option, "finite number"
    )


@pytest.mark.fault("threshold that is NaN or infinite")
@pytest.mark.parametrize("where", ["bundle", "file"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_manifest_threshold_that_is_not_a_finite_number_is_refused(
    tmp_path, bundle, where, value
):
    def edit(manifest):
        if where == "bundle":
            manifest["threshold"] = value
        else:
            manifest["files"]["model.onnx"]["threshold"] = value

    copy = copy_bundle(bundle, tmp_path / "b", edit)
    with pytest.raises(BundleError, match="finite number"):
        load_bundle(copy)
    refused(
        cli("run", copy, "--source", good_frames(tmp_path / "good", 2), "--headless"),
        "threshold",
        "finite number",
    )


# 2. preprocessing parameters that cannot normalise -------------------------------------


@pytest.mark.fault("preprocess values that cannot normalise")
@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("mean", [0.485, 0.456], "3 numbers"),
        ("mean", [0.5, 0.5, 0.5, 0.5], "3 numbers"),
        ("mean", 0.5, "3 numbers"),
        ("mean", [0.5, "x", 0.5], "finite number"),
        ("mean", [0.5, float("nan"), 0.5], "finite number"),
        ("mean", [0.5, None, 0.5], "finite"),
        ("mean", [1e36, 0.5, 0.5], "in [-1000, 1000]"),
        ("std", [0.2, 0.0, 0.2], "in [1e-06, 1000]"),
        ("std", [0.2, -0.1, 0.2], "in [1e-06, 1000]"),
        ("std", [0.2, float("inf"), 0.2], "finite"),
        ("height", 64.0, "whole number"),
        ("width", True, "whole number"),
        ("height", None, "whole"),
    ],
)
def test_manifest_preprocess_values_are_refused_on_load(tmp_path, bundle, field, value, needle):
    copy = copy_bundle(bundle, tmp_path / "b", lambda m: m["preprocess"].__setitem__(field, value))
    with pytest.raises(BundleError, match="preprocess") as caught:
        load_bundle(copy)
    assert needle in caught.value.problem and caught.value.fix


@pytest.mark.fault("preprocess values that cannot normalise")
def test_run_refuses_a_bundle_with_a_zero_std(tmp_path, bundle):
    copy = copy_bundle(
        bundle, tmp_path / "b", lambda m: m["preprocess"].__setitem__("std", [0, 0, 0])
    )
    refused(
        cli("run", copy, "--source", good_frames(tmp_path / "good", 2), "--headless"),
        "preprocess",
        "std",
        "in [1e-06, 1000]",
    )


# 3. the decision rule and the calibration share one rule -------------------------------


@pytest.mark.fault("decision rule and calibration disagree")
def test_a_score_exactly_at_the_threshold_is_ok_and_just_above_it_ng(tmp_path, bundle):
    from dmgrd_edge.runtime.capture import Capture
    from dmgrd_edge.runtime.pipeline import Pipeline, make_preprocess
    from dmgrd_edge.runtime.select import create_backend
    from dmgrd_edge.runtime.sinks import open_sink
    from dmgrd_edge.runtime.sources import open_source, parse_uri

    from dmgrd_edge.data.imageio import read_image
    from dmgrd_edge.options import RunConfig

    frames = good_frames(tmp_path / "same", 5, same=True)
    loaded = load_bundle(bundle)
    backend = create_backend(loaded, "onnxruntime", "fp32", log=lambda _: None, workers=1).backend
    preprocess = make_preprocess(loaded)
    score = backend.infer(preprocess(read_image(frames / "000.png"))[None])[1][0]
    below = np.nextafter(score, np.float32(-np.inf))
    decisions = {}
    for name, threshold in (("at", float(score)), ("below", float(below))):
        events = tmp_path / f"{name}.jsonl"
        pipeline = Pipeline(
            loaded,
            backend,
            [open_sink(str(events), True)],
            RunConfig(threshold=threshold, pixel_threshold=threshold, status_every_s=1e9),
            log=lambda _: None,
        )
        assert pipeline.run(Capture(open_source(parse_uri(str(frames))), preprocess)) == 0
        decisions[name] = [json.loads(line)["decision"] for line in events.read_text().splitlines()]
    assert decisions == {"at": ["OK"] * 5, "below": ["NG"] * 5}


@pytest.mark.fault("decision rule and calibration disagree")
@pytest.mark.parametrize("same", [True, False], ids=["identical", "distinct"])
def test_calibrated_threshold_flags_no_more_good_frames_than_the_rate(tmp_path, bundle, same):
    """12 good frames at a false-alarm rate of 0.1 allow floor(1.2) = 1 NG frame, and none
    when the frames are identical (they all score the threshold)."""
    copy = copy_bundle(bundle, tmp_path / "b")
    frames = good_frames(tmp_path / "good", 12, same=same)
    one = ("--backend", "onnxruntime", "--precision", "fp32", "--batch", "1")  # both run alike
    calibrated = cli(
        "calibrate-threshold", copy, "--source", frames, "--false-alarm-rate", "0.1", *one
    )
    assert calibrated.returncode == 0, calibrated.stderr
    events = tmp_path / "events.jsonl"
    ran = cli(
        "run", copy, "--source", frames, "--sink", events, "--headless", "--workers", "1", *one
    )
    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == 12
    ng = sum(e["decision"] == "NG" for e in lines)
    if same:
        assert ng == 0
    else:
        assert len({e["score"] for e in lines}) == 12 and ng == 1


@pytest.mark.fault("decision rule and calibration disagree")
def test_the_rule_is_strictly_greater_and_a_nan_score_is_ng():
    from dmgrd_edge.runtime.decision import is_ng, threshold_for_rate

    assert is_ng(0.5, 0.5) is False and is_ng(0.50001, 0.5) is True and is_ng(float("nan"), 0.5)
    assert list(is_ng(np.array([0.4, 0.5, 0.6, np.nan]), 0.5)) == [False, False, True, True]
    assert threshold_for_rate([0.3] * 12, 0.1) == 0.3
    # halfway between the highest score it passes and the next: the same frames scored
    # again with rounding noise (another batch size) fall on the same side
    assert threshold_for_rate(np.arange(12.0), 0.1) == 10.5
    noisy = np.arange(12.0) + np.array([1e-6, -1e-6] * 6)
    assert int(np.count_nonzero(is_ng(noisy, threshold_for_rate(np.arange(12.0), 0.1)))) == 1
    with pytest.raises(DmgrdError, match="NaN"):
        threshold_for_rate([0.1] * 11 + [float("nan")], 0.1)


# 4. writes replace a regular file or nothing -------------------------------------------


def _not_regular(tmp_path: Path, kind: str) -> tuple[Path, object]:
    """A path of this kind and a function telling it is still what it was."""
    import os
    import stat

    path = tmp_path / f"target.{kind}"
    if kind == "symlink":
        (tmp_path / "real.json").write_text("keep me")
        path.symlink_to(tmp_path / "real.json")
        return path, lambda: path.is_symlink() and (tmp_path / "real.json").read_text() == "keep me"
    if kind == "dangling-symlink":
        path.symlink_to(tmp_path / "nowhere.json")
        return path, lambda: path.is_symlink() and not (tmp_path / "nowhere.json").exists()
    if kind == "folder":
        path.mkdir()
        (path / "inside.txt").write_text("keep me")
        return path, lambda: (path / "inside.txt").read_text() == "keep me"
    if kind == "fifo":
        os.mkfifo(path)
        return path, lambda: stat.S_ISFIFO(os.lstat(path).st_mode)
    try:  # a character device node (the numbers of /dev/null), as a root-run service could meet
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here")
    return path, lambda: stat.S_ISCHR(os.lstat(path).st_mode)


KINDS = ["symlink", "dangling-symlink", "folder", "fifo", "device"]


@pytest.mark.fault("write target that is not a regular file")
@pytest.mark.parametrize("kind", KINDS)
def test_atomic_write_refuses_anything_but_a_regular_file(tmp_path, kind):
    from dmgrd_edge.atomic import atomic_write_bytes

    path, unchanged = _not_regular(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DmgrdError) as caught:
        atomic_write_bytes(path, b"new")
    assert caught.value.exit_code == 4 and str(path) in caught.value.problem and caught.value.fix
    assert unchanged() and sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary left
    atomic_write_bytes(tmp_path / "plain.json", b"1")
    atomic_write_bytes(tmp_path / "plain.json", b"2")  # a regular file is replaced
    assert (tmp_path / "plain.json").read_bytes() == b"2"


@pytest.mark.fault("write target that is not a regular file")
@pytest.mark.parametrize("kind", ["symlink", "folder", "fifo"])
def test_run_refuses_a_stats_json_that_is_not_a_regular_file_before_it_starts(
    tmp_path, bundle, kind
):
    path, unchanged = _not_regular(tmp_path, kind)
    frames = good_frames(tmp_path / "good", 2)
    refused(
        cli("run", bundle, "--source", frames, "--headless", "--stats-json", path),
        str(path),
        code=4,
    )
    assert unchanged()


@pytest.mark.fault("write target that is not a regular file")
def test_bench_and_report_refuse_outputs_that_are_not_regular_files(tmp_path, bundle):
    path, unchanged = _not_regular(tmp_path, "symlink")
    refused(
        cli("bench", bundle, "--batch", "1", "--runs", "1", "--warmup", "0", "--out", path),
        str(path),
        code=4,
    )
    assert unchanged()
    result = tmp_path / "bench.json"
    ran = cli("bench", bundle, "--batch", "1", "--runs", "1", "--warmup", "0", "--out", result)
    assert ran.returncode == 0, ran.stderr
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("old report")
    (report / "report.csv").mkdir()
    done = cli("report", result, "--out", report)
    assert done.returncode == 4 and str(report / "report.csv") in " ".join(done.stderr.split())
    assert (report / "report.md").read_text() == "old report"  # no half-replaced set of reports
    assert not (report / "report.html").exists()


# 5. export --out that is a file --------------------------------------------------------


@pytest.mark.fault("write target that is not a regular file")
def test_export_refuses_an_out_that_is_a_file(tmp_path, trained_ckpt):
    out = tmp_path / "bundle"
    out.write_text("not a bundle: my notes")
    result = cli("export", trained_ckpt, "--out", out, "--calib-count", "4", torch=True)
    refused(result, str(out), "not a folder")
    assert out.read_text() == "not a bundle: my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging folder left


# 6. numbers in range before work starts -----------------------------------------------


def run_main(args, capsys) -> tuple[int, str]:
    """The CLI's entry point in this process (fast: refusals come before any heavy import)."""
    from dmgrd_edge.cli import main

    saved = sys.argv
    sys.argv = ["dmgrd-edge", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return code, " ".join(capsys.readouterr().err.split())


RUN_CASES = [
    (["--threads", "-1"], "--threads", ">= 0"),
    (["--max-frames", "0"], "--max-frames", ">= 1"),
    (["--max-frames", "-3"], "--max-frames", ">= 1"),
    (["--queue-size", "0"], "--queue-size", ">= 1"),
    (["--max-retries", "-1"], "--max-retries", ">= 0"),
    (["--batch", "0"], "--batch", "in [1, 4]"),
    (["--batch", "5"], "--batch", "in [1, 4]"),
    (["--input-fps", "nan"], "--input-fps", "> 0"),
    (["--input-fps", "0"], "--input-fps", "> 0"),
    (["--input-fps", "-5"], "--input-fps", "> 0"),
    (["--input-fps", "inf"], "--input-fps", "> 0"),
]


@pytest.mark.fault("command-line number out of range")
@pytest.mark.parametrize("args, option, needle", RUN_CASES)
def test_run_numbers_are_range_checked_before_work(tmp_path, bundle, capsys, args, option, needle):
    frames = good_frames(tmp_path / "good", 1)
    code, err = run_main(["run", bundle, "--source", frames, "--headless", *args], capsys)
    assert code == 2 and option in err and needle in err and "fix:" in err, err
    assert "backend:" not in err


@pytest.mark.fault("command-line number out of range")
@pytest.mark.parametrize(
    "args, option, needle",
    [
        (
            ["calibrate-threshold", "{bundle}", "--source", "{frames}", "--batch", "5"],
            "--batch",
            "in [1, 4]",
        ),
        (
            ["calibrate-threshold", "{bundle}", "--source", "{frames}", "--max-frames", "0"],
            "--max-frames",
            ">= 1",
        ),
        (
            [
                "calibrate-threshold",
                "{bundle}",
                "--source",
                "{frames}",
                "--false-alarm-rate",
                "nan",
            ],
            "--false-alarm-rate",
            "in (0, 0.5)",
        ),
        (["bench", "{bundle}", "--batch", "1,5"], "--batch", "in [1, 4]"),
        (["bench", "{bundle}", "--threads", "-2"], "--threads", ">= 0"),
        (["bench", "{bundle}", "--runs", "0"], "--runs", ">= 1"),
        (["train", "--data", "{missing}", "--lr", "nan"], "--lr", "> 0"),
        (["train", "--data", "{missing}", "--lr", "-0.1"], "--lr", "> 0"),
        (["train", "--data", "{missing}", "--steps", "0"], "--steps", ">= 1"),
        (["train", "--data", "{missing}", "--threads", "-1"], "--threads", ">= 0"),
        (["prune", "{missing}", "--out", "{missing}", "--lr", "nan"], "--lr", "> 0"),
        (["prune", "{missing}", "--out", "{missing}", "--ratio", "nan"], "--ratio", "in (0, 1)"),
        (["prune", "{missing}", "--out", "{missing}", "--threads", "-1"], "--threads", ">= 0"),
        (
            ["export", "{missing}", "--out", "{missing}", "--int8", "--max-drop", "nan"],
            "--max-drop",
            "> 0",
        ),
        (["report", "{missing}", "--max-drop", "nan"], "--max-drop", ">= 0"),
        (
            [
                "generate-data",
                "{missing}",
                "--n-train",
                "0",
                "--size",
                "64",
                "--categories",
                "washer",
            ],
            "--n-train",
            ">= 1",
        ),
    ],
)
def test_other_numbers_are_range_checked_before_work(
    tmp_path, bundle, capsys, args, option, needle
):
    frames = good_frames(tmp_path / "good", 1)
    fill = {"bundle": bundle, "frames": frames, "missing": tmp_path / "missing"}
    code, err = run_main([a.format(**fill) for a in args], capsys)
    assert code == 2 and option in err and needle in err and "fix:" in err, err
    assert "backend:" not in err and not (tmp_path / "missing").exists()


# error messages are printed as they are ---------------------------------------------


@pytest.mark.fault("command-line number out of range")
def test_messages_are_printed_as_they_are_not_as_console_markup(tmp_path, bundle, capsys):
    """A problem naming a glob like [/x] (console markup syntax) is printed as it is."""
    code, err = run_main(["run", bundle, "--source", tmp_path / "[/x]*.png", "--headless"], capsys)
    assert code == 2 and "no images found" in err and "[/x]*.png" in err, err


# 7. latency statistics in bounded memory -----------------------------------------------


@pytest.mark.fault("unbounded latency statistics")
def test_latency_statistics_keep_bounded_memory_and_numpy_close_quantiles():
    import tracemalloc

    from dmgrd_edge.runtime.stats import RELATIVE_ERROR, Stats

    rng = np.random.default_rng(0)
    data = np.concatenate(
        [
            rng.lognormal(1.0, 0.6, 290_000),
            rng.uniform(50, 400, 9_000),
            rng.uniform(1e-4, 1e-2, 1_000),
        ]
    )
    rng.shuffle(data)
    values = data.tolist()
    stats = Stats()
    stats.add("inference", values[0])  # its storage exists from the first sample on
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for value in values[1:]:
            stats.add("inference", value)
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 16 * 1024, grown  # 300k floats in a list would take about 9 MB
    assert stats.nbytes() < 64 * 1024
    summary = stats.summary()["stages_ms"]["inference"]
    assert summary["count"] == 300_000
    assert summary["mean"] == pytest.approx(data.mean(), rel=1e-9)
    assert summary["max"] == data.max()
    for q in (50, 90, 99):
        exact = np.percentile(data, q)
        assert abs(summary[f"p{q}"] - exact) <= RELATIVE_ERROR * exact, (q, summary[f"p{q}"], exact)


# 8. a source without a single readable frame -------------------------------------------


def corrupt_pngs(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image, _ = make_image("washer", 5, "video", 0, 64)
    _, encoded = cv2.imencode(".png", image)
    data = encoded.tobytes()
    (folder / "0.png").write_bytes(data[: len(data) // 2])  # truncated
    middle = bytearray(data)
    middle[60:400] = bytes(340)  # the image data zeroed, the end chunk intact
    (folder / "1.png").write_bytes(bytes(middle))
    for i in range(2, count):
        (folder / f"{i}.png").write_bytes(b"not a png at all" * i)
    return folder


@pytest.mark.fault("source without a readable frame")
@pytest.mark.parametrize("loop", [False, True], ids=["once", "loop"])
def test_a_source_whose_every_file_is_corrupt_ends_with_an_error(tmp_path, bundle, loop):
    frames = corrupt_pngs(tmp_path / "bad")
    stats = tmp_path / "stats.json"
    result = cli(
        "run",
        bundle,
        "--source",
        frames,
        "--headless",
        "--stats-json",
        stats,
        *(["--loop"] if loop else []),
        timeout=120,
    )
    err = " ".join(result.stderr.split())
    assert result.returncode == 3, err
    assert "none of the 3 image files" in err and "fix:" in err and "Traceback" not in err
    summary = json.loads(stats.read_text())
    assert summary["frames"] == 0 and summary["corrupt"] == 3 and summary["source_error"]


@pytest.mark.fault("source without a readable frame")
def test_calibration_on_a_camera_that_gives_no_frame_ends_with_an_error(tmp_path, bundle):
    """A camera that stopped sending frames ends the calibration, it is not waited for
    for ever (a real video file presented as a camera whose every read fails)."""
    from dmgrd_edge.runtime.select import create_backend
    from dmgrd_edge.runtime.sources import SourceError, Status, VideoCaptureSource, parse_uri
    from dmgrd_edge.runtime.threshold import score_source

    class DeadCamera(VideoCaptureSource):
        def read(self):
            return Status.ERROR, None

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    loaded = load_bundle(bundle)
    backend = create_backend(loaded, "onnxruntime", "fp32", log=lambda _: None).backend
    camera = DeadCamera(parse_uri(str(video)))
    with pytest.raises(SourceError, match="no frame in 100 reads"):
        score_source(camera, backend, lambda image: image, max_frames=10)
    assert camera.cap is None  # closed


# properties: any input ends in a value or a clean DmgrdError ---------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
PROPERTY = settings(deadline=None, max_examples=250, derandomize=True)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated(draw, manifest: dict):
    """The manifest with one to three of its values deleted or replaced by any JSON value,
    or a key added anywhere."""
    result = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(result))))
        value = draw(JSON)
        if not path:
            result = value
            continue
        parent = result
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = value
        else:
            parent[path[-1]] = value
    return result


@pytest.fixture(scope="module")
def fuzz_bundle(tmp_path_factory, bundle) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fuzz") / "b"
    shutil.copytree(bundle, root)
    return root, json.loads((root / "manifest.json").read_text())


def use_bundle(loaded) -> None:
    """What the runtime reads from a loaded bundle works and gives usable values."""
    from dmgrd_edge.runtime.pipeline import make_preprocess
    from dmgrd_edge.runtime.select import onnx_file_for

    from dmgrd_edge.checks import batch_range

    low, high = batch_range(loaded.manifest)
    assert 1 <= low <= high
    assert math.isfinite(loaded.threshold) and loaded.model_config.image_size >= 32
    for name in loaded.manifest["files"]:
        assert math.isfinite(loaded.threshold_for(name)) and loaded.path(name).is_file()
    for precision in ("auto", "fp32", "int8"):
        try:
            name, _ = onnx_file_for(loaded, precision, accelerated=False, log=lambda _: None)
        except DmgrdError:
            continue
        assert name in loaded.manifest["files"]
    image = np.full((48, 40, 3), 128, np.uint8)
    tensor = make_preprocess(loaded)(image)
    pre = loaded.preprocess
    assert tensor.shape == (3, pre.height, pre.width) and np.isfinite(tensor).all()


@pytest.mark.fault("property: any manifest edit")
@PROPERTY
@given(data=st.data())
def test_any_edit_of_a_manifest_loads_or_is_refused_cleanly(fuzz_bundle, data):
    root, manifest = fuzz_bundle
    edited = data.draw(mutated(manifest))
    (root / "manifest.json").write_text(json.dumps(edited))
    try:
        loaded = load_bundle(root)
    except DmgrdError as exc:
        assert exc.problem and exc.fix
        return
    use_bundle(loaded)


@pytest.mark.fault("property: any manifest file bytes")
@PROPERTY
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
@example(b"1" * 5000)  # an integer longer than Python converts from text
@example(b"[" * 100_000)  # deeper than the parser recurses
@example(b'{"schema": "dmgrd-edge-bundle", "schema_version": true}')
def test_any_manifest_file_loads_or_is_refused_cleanly(fuzz_bundle, text):
    root, _ = fuzz_bundle
    (root / "manifest.json").write_bytes(text)
    with pytest.raises(DmgrdError):
        load_bundle(root)


SCHEMES = ["csi", "CSI", "rtsp", "rtsps", "http", "gst", "v4l2", "file", "ftp", ""]
SUFFIXES = [".mp4", ".avi", ".png", ".jpg", ".txt", "", "/"]
URIS = st.one_of(
    st.text(),
    st.builds("{}://{}".format, st.sampled_from(SCHEMES), st.text()),
    st.builds("{}://{}".format, st.sampled_from(SCHEMES), st.text("0123456789²٣/devideo ")),
    st.text("0123456789²٣ "),
    st.builds("/dev/video{}".format, st.text("0123456789²x", max_size=3)),
    st.builds("{}{}".format, st.text(max_size=300), st.sampled_from(SUFFIXES)),
    st.builds("{}*{}".format, st.text(max_size=8), st.sampled_from(SUFFIXES)),
)
SIZES = st.none() | st.integers(-3, 10_000)


@pytest.mark.fault("property: any source URI")
@PROPERTY
@given(uri=URIS, width=SIZES, height=SIZES, fps=st.none() | st.floats(), loop=st.booleans())
@example(uri="a" * 300 + ".png", width=None, height=None, fps=None, loop=False)  # too long a name
@example(uri="v4l2://²", width=None, height=None, fps=None, loop=False)
@example(uri="clip.mp4", width=None, height=None, fps=float("nan"), loop=False)
def test_any_source_string_parses_or_is_refused_cleanly(uri, width, height, fps, loop):
    from dmgrd_edge.runtime.sources import parse_uri, v4l2_index

    try:
        spec = parse_uri(uri, width, height, fps, loop)
    except DmgrdError as exc:
        assert exc.problem and exc.fix
        return
    assert spec.kind in ("v4l2", "csi", "rtsp", "gst", "file", "images") and spec.location
    if spec.kind == "v4l2":
        assert v4l2_index(spec) >= 0
    if spec.kind == "csi":
        assert spec.location.isascii() and spec.location.isdigit()
    assert spec.fps is None or (math.isfinite(spec.fps) and spec.fps > 0)
    assert all(v is None or v >= 1 for v in (spec.width, spec.height))
    assert not (spec.camera and spec.loop)
