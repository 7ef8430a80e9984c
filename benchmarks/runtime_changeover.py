"""A product changeover under load (`dmgrd-edge run --config`'s Line): frames decided by the
wrong model (goal 0 beyond those in a backend call at the switch), and the pause in
decisions around the switch against the normal gap between decisions.

One camera ("cam") switches between two real exported bundles A and B while a second camera
("load") keeps running bundle A, both replaying a generated line video at a camera's rate
(the runtime's paced source). Changeovers are triggered the three ways the runtime takes
them, in turn: SIGHUP (the configuration rewritten, its modification time kept so the file
watch does not see it), a change of the file (``watch_config = true``), and a request on the
control interface (``POST /api/cameras/cam/changeover`` to the live view on loopback).

Which model decided a frame is read from its score alone: every frame of the video is scored
beforehand by each bundle (batch 1, same preprocess), and each JSONL event's score is matched
to the nearer of the two sets (the two sets are checked to be apart first). Per changeover:
old-model decisions after the switch (and how many frames were in the old calls then),
new-model decisions before it, decisions whose OK/NG disagrees with their model's
threshold, and the largest gap between decisions from the request to 2 s after the switch.

    python benchmarks/runtime_changeover.py --make-bundles DIR   # two tiny models
    python benchmarks/runtime_changeover.py --bundle-a A --bundle-b B

Torch is not imported (``--make-bundles`` trains and exports through the CLI, in processes
of their own).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from dmgrd_edge.runtime.device_info import device_info
from dmgrd_edge.runtime.line_config import load_line_config
from dmgrd_edge.runtime.multicam import Line
from dmgrd_edge.runtime.pipeline import make_preprocess
from dmgrd_edge.runtime.select import create_backend
from dmgrd_edge.runtime.sources import Status, open_source, parse_uri
from runtime_stream import write_video

from dmgrd_edge.bundle import load_bundle
from dmgrd_edge.report import write_result

TOKEN = "changeover-benchmark"
TRIGGERS = ("signal", "file", "request")


def make_bundles(folder: Path, steps: int) -> tuple[Path, Path]:
    """Two small models of the same part (64 px, different seeds), trained and exported with
    the CLI."""
    cli = [sys.executable, "-m", "dmgrd_edge.cli"]
    data = folder / "data"
    if not data.exists():
        subprocess.run(
            [*cli, "generate-data", str(data), "--categories", "washer", "--size", "64",
             "--n-train", "24", "--n-test-good", "4", "--n-test-per-defect", "1"],
            check=True,
        )  # fmt: skip
    bundles = []
    for name, seed in (("a", 1), ("b", 2)):
        bundle = folder / f"bundle_{name}"
        if not (bundle / "manifest.json").exists():
            runs = folder / f"runs_{name}"
            subprocess.run(
                [*cli, "train", "--data", str(data), "--category", "washer", "--image-size",
                 "64", "--steps", str(steps), "--batch-size", "4", "--memory-size", "4",
                 "--seed", str(seed), "--val-every", str(steps), "--checkpoint-every",
                 str(steps), "--out", str(runs), "--overwrite"],
                check=True,
            )  # fmt: skip
            subprocess.run(
                [*cli, "export", str(runs / "washer" / "last.pt"), "--out", str(bundle)],
                check=True,
            )
        bundles.append(bundle)
    return bundles[0], bundles[1]


def video_scores(bundle: Path, video: Path) -> np.ndarray:
    """Each frame's score by this bundle's fp32 model, as the line preprocesses it."""
    loaded = load_bundle(bundle)
    chosen = create_backend(loaded, "onnxruntime", "fp32", log=lambda *_: None, workers=1)
    # the line runs fp32 too ([line] precision), so each frame's score is the one it gets
    preprocess, source = make_preprocess(loaded), open_source(parse_uri(str(video)))
    scores = []
    try:
        while True:
            status, image = source.read()
            if status is Status.END:
                break
            if status is Status.OK:
                scores.append(float(chosen.backend.infer(preprocess(image)[None])[1][0]))
    finally:
        source.close()
        chosen.close()
    return np.asarray(scores)


def distinct_video(folder: Path, a: Path, b: Path, args):
    """A short looped video whose frames' scores by A and by B are all apart (the first seed
    that gives one): the video, each bundle's frame scores, the smallest distance."""
    size = load_bundle(a).preprocess.height
    for seed in range(7, 57):
        video = folder / f"line_{seed}.avi"
        write_video(video, "washer", args.distinct, size, 0.25, seed=seed, codec="raw")
        sets = {"a": video_scores(a, video), "b": video_scores(b, video)}
        both = np.sort(np.concatenate([sets["a"], sets["b"]]))
        apart = float(np.min(np.diff(both) / np.maximum(np.abs(both[1:]), 1e-9)))
        if apart > 5 * args.tolerance:
            return video, sets, apart
    raise SystemExit("no video of distinct frame scores found: give bundles of other models")


def classify(score: float, sets: dict[str, np.ndarray], tolerance: float) -> str:
    """The bundle whose frame scores hold ``score`` (within a relative tolerance)."""
    best, name = min(
        (np.min(np.abs(s - score)) / max(abs(score), 1e-9), n) for n, s in sets.items()
    )
    return name if best <= tolerance else "unknown"


def write_config(path: Path, video: Path, cam_bundle: Path, load_bundle_: Path, args, mtime_ns):
    """The line configuration, replaced in one step with the modification time given (None:
    now)."""
    text = (
        f'[line]\nworkers = "{args.workers}"\nbatch = 4\nwatch_config = true\n'
        'precision = "fp32"\nstatus_every_s = 1000\n'
        f'[view]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n'
    )
    for name, bundle in (("cam", cam_bundle), ("load", load_bundle_)):
        text += (
            f'[[camera]]\nname = "{name}"\nsource = "{video}"\nbundle = "{bundle}"\n'
            f"input_fps = {args.fps}\nloop = true\nng_warn_rate = 1.0\n"
            f'sinks = ["{path.parent / name}.jsonl"]\n'
        )
    staged = path.with_suffix(".new")
    staged.write_text(text)
    if mtime_ns is not None:
        os.utime(staged, ns=(mtime_ns, mtime_ns))
    os.replace(staged, path)


def trigger(how: str, line: Line, config: Path, video: Path, bundle: Path, a: Path, args) -> None:
    if how == "request":
        request = urllib.request.Request(
            f"http://127.0.0.1:{line.view.port}/api/cameras/cam/changeover",
            data=json.dumps({"bundle": str(bundle)}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            assert reply.status == 200
        return
    stamp = config.stat().st_mtime_ns
    if how == "signal":  # the file watch must not see this one: it keeps its old time
        write_config(config, video, bundle, a, args, stamp)
        os.kill(os.getpid(), signal.SIGHUP)
    else:  # a later modification time than the watch has seen
        write_config(config, video, bundle, a, args, stamp + 10**9)


def run_line(config: Path, video: Path, a: Path, b: Path, args) -> tuple[Line, list[dict]]:
    line = Line(load_line_config(config), log=lambda m: None).open()
    line.install_signal_handlers()  # this is the main thread: SIGHUP reaches the line
    runner = threading.Thread(target=line.run, daemon=True)
    runner.start()
    requests, bundle = [], a
    time.sleep(args.settle)
    for i in range(args.rounds * len(TRIGGERS)):
        how, bundle = TRIGGERS[i % len(TRIGGERS)], (b if bundle == a else a)
        count = len(line.changeovers)
        requested = dt.datetime.now(dt.timezone.utc)
        trigger(how, line, config, video, bundle, a, args)
        deadline = time.monotonic() + 120
        while len(line.changeovers) == count and time.monotonic() < deadline:
            time.sleep(0.01)
        record = line.changeovers[count]
        assert record["what"] == "bundle", record
        requests.append({"trigger": how, "requested": requested, "record": record,
                         "to": "a" if bundle == a else "b"})  # fmt: skip
        time.sleep(args.settle)
    line.stop_event.set()
    runner.join(120)
    return line, requests


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def measure(events: list[dict], request: dict, before: str) -> dict:
    """One changeover's figures from the camera's events (each with its model)."""
    record = request["record"]
    switched = when(record["switched_at"])
    start, end = request["requested"], when(record["time"]) + dt.timedelta(seconds=2)
    after = request["to"]
    old_after = sum(1 for e in events if e["model"] == before and when(e["time"]) > switched)
    new_before = sum(1 for e in events if e["model"] == after and when(e["time"]) <= switched)
    first_new = next((i for i, e in enumerate(events) if e["model"] == after), len(events))
    misordered = sum(1 for e in events[first_new:] if e["model"] == before)
    times = [when(e["time"]) for e in events]
    window = [t for t in times if start <= t <= end]
    gaps = [1000 * (y - x).total_seconds() for x, y in zip(window, window[1:])]
    return {
        "trigger": request["trigger"],
        "to": after,
        "request_to_switch_ms": 1000 * (switched - start).total_seconds(),
        "load_and_switch_ms": record["ms"],
        "in_flight": record["in_flight"],
        "waited_for_in_flight_ms": record["waited_ms"],
        "old_model_after_switch": old_after,
        "wrong_beyond_in_flight": max(0, old_after - record["in_flight"]) + new_before,
        "new_model_before_switch": new_before,
        "misordered": misordered,
        "max_gap_ms": max(gaps) if gaps else None,
    }


def segments(events: list[dict], requests: list[dict]) -> list[list[dict]]:
    """The camera's events cut midway between changeovers: each piece holds one switch."""
    cuts = [when(r["record"]["switched_at"]) for r in requests]
    bounds = [cuts[0] - dt.timedelta(days=1)]
    bounds += [x + (y - x) / 2 for x, y in zip(cuts, cuts[1:])]
    bounds += [cuts[-1] + dt.timedelta(days=1)]
    return [[e for e in events if lo <= when(e["time"]) < hi] for lo, hi in zip(bounds, bounds[1:])]


def analyse(folder: Path, requests: list[dict], sets: dict, thresholds: dict, tol: float) -> dict:
    events = [json.loads(x) for x in (folder / "cam.jsonl").read_text().splitlines()]
    events = [e for e in events if "frame" in e]
    for e in events:
        e["model"] = classify(e["score"], sets, tol)
    threshold_wrong = sum(
        1 for e in events if e["model"] in thresholds
        and (e["decision"] == "NG") != (e["score"] > thresholds[e["model"]])
    )  # fmt: skip
    per = []
    before = "a"
    for request, piece in zip(requests, segments(events, requests)):
        per.append(measure(piece, request, before))
        before = request["to"]
    times = [when(e["time"]) for e in events]
    gaps = [1000 * (y - x).total_seconds() for x, y in zip(times, times[1:])]
    windows = [
        (r["requested"], when(r["record"]["time"]) + dt.timedelta(seconds=2)) for r in requests
    ]
    outside = [
        g for g, x, y in zip(gaps, times, times[1:])
        if not any(lo <= y and x <= hi for lo, hi in windows)
    ]  # fmt: skip
    return {
        "events": len(events),
        "unclassified": sum(1 for e in events if e["model"] == "unknown"),
        "threshold_mismatches": threshold_wrong,
        "decision_gap_ms": {
            "median": statistics.median(gaps),
            "p99": float(np.quantile(gaps, 0.99)),
            "max_outside_changeovers": max(outside) if outside else None,
        },
        "changeovers": per,
    }


def print_table(result: dict) -> None:
    print(
        f"{'trigger':>8s} {'to':>3s} {'req->switch ms':>14s} {'in flight':>9s} "
        f"{'waited ms':>9s} {'old after':>9s} {'wrong':>5s} {'max gap ms':>10s}"
    )
    for c in result["changeovers"]:
        print(
            f"{c['trigger']:>8s} {c['to']:>3s} {c['request_to_switch_ms']:14.0f} "
            f"{c['in_flight']:9d} {c['waited_for_in_flight_ms']:9.1f} "
            f"{c['old_model_after_switch']:9d} "
            f"{c['wrong_beyond_in_flight']:5d} {c['max_gap_ms'] or 0:10.0f}"
        )
    gap = result["decision_gap_ms"]
    print(
        f"{result['events']} decisions of the switching camera, {result['unclassified']} "
        f"unclassified, {result['threshold_mismatches']} decided against their model's "
        f"threshold; gap between decisions: median {gap['median']:.0f} ms, "
        f"p99 {gap['p99']:.0f} ms, largest away from the changeovers "
        f"{gap['max_outside_changeovers'] or 0:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle-a", type=Path)
    parser.add_argument("--bundle-b", type=Path)
    parser.add_argument("--make-bundles", type=Path, help="train and export A and B here")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--fps", type=float, default=15.0, help="each camera's frame rate")
    parser.add_argument("--workers", default="auto", help="backend calls in flight (as run's)")
    parser.add_argument("--rounds", type=int, default=2, help="changeovers per trigger")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between changeovers")
    parser.add_argument("--tolerance", type=float, default=2e-4, help="relative score match")
    parser.add_argument("--distinct", type=int, default=4, help="distinct frames in the video")
    parser.add_argument("--out", default="benchmarks/results/runtime_changeover.json")
    args = parser.parse_args()
    if args.make_bundles:
        args.bundle_a, args.bundle_b = make_bundles(args.make_bundles, args.train_steps)
    if not (args.bundle_a and args.bundle_b):
        parser.error("give --bundle-a and --bundle-b, or --make-bundles DIR")
    a, b = args.bundle_a.resolve(), args.bundle_b.resolve()
    folder = Path(tempfile.mkdtemp(prefix="dmgrd-changeover-"))
    video, sets, apart = distinct_video(folder, a, b, args)
    thresholds = {"a": load_bundle(a).threshold_for("model.onnx"),
                  "b": load_bundle(b).threshold_for("model.onnx")}  # fmt: skip
    config = folder / "line.toml"
    write_config(config, video, a, a, args, None)
    started = time.time()
    line, requests = run_line(config, video, a, b, args)
    result = analyse(folder, requests, sets, thresholds, args.tolerance)
    result.update(
        seconds=time.time() - started,
        camera_fps=args.fps,
        workers=args.workers,
        closest_scores_apart=apart,
        thresholds=thresholds,
        backends=[g["backend"] for g in line.summary["bundles"]],
        bundles={"a": str(a), "b": str(b)},
        device=device_info(),
        load_average=os.getloadavg(),
    )
    print_table(result)
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
