"""`dmgrd-edge demo`: the whole toolkit on generated line data, from nothing to a summary page.

1. line data: a training set (good parts only, plus a test split with masks) and, with another
   seed, frames "from the camera" the model never sees in training: known-good frames for
   the threshold and a video of good and defective parts (the truth of every frame kept);
2. the default model trained briefly, evaluated, exported to fp32 and INT8 (the sweep's
   stages for its first variant);
3. the deployment bundle: a copy of that export whose INT8 threshold is calibrated on the
   known-good frames (`dmgrd-edge calibrate-threshold`);
4. the video streamed through the runtime (`dmgrd-edge run`, torch-free, in its own process):
   JSONL events, NG frames with overlays, an overlay recording, latency statistics;
5. a small sweep (the default unpruned and pruned 50 %, fp32 and INT8) and its trade-off
   report;
6. DIR/index.html (what ran, accuracy, latency, NG frames found against the truth, links to
   every artefact), DIR/demo.json (the same, for programs) and a short console summary.

``--quick`` runs the same steps at a reduced size (64 px, a few steps): the test's setting.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dmgrd_edge.atomic import atomic_write_bytes
from dmgrd_edge.config import ModelConfig
from dmgrd_edge.errors import DataError, DmgrdError
from dmgrd_edge.options import DemoSettings, SweepConfig
from dmgrd_edge.report import percent

from .sweep import Sweep, Variant, _die_with_parent

CATEGORY = "washer"
MARKER = "demo.json"


@dataclass(frozen=True)
class DemoSize:
    image_size: int
    n_train: int  # good training images
    n_test_good: int  # the test split the sweep evaluates on
    n_test_per_defect: int
    known_good: int  # camera frames for the threshold
    video_good: int
    video_per_defect: int
    false_alarm_rate: float
    steps: int
    prune_steps: int
    batch_size: int
    calib_count: int
    guard_count: int
    bench_batches: tuple[int, ...]
    bench_runs: int
    # the trained model's image score: the default, except where the training is too short
    # for the student to tell a defect from a good part on its own
    image_score: str = ModelConfig.image_score


SIZES = {
    "full": DemoSize(
        image_size=256,
        n_train=60,
        n_test_good=10,
        n_test_per_defect=4,
        known_good=100,
        video_good=60,
        video_per_defect=3,
        false_alarm_rate=0.01,
        steps=100,
        prune_steps=40,
        batch_size=8,
        calib_count=48,
        guard_count=12,
        bench_batches=(1, 4),
        bench_runs=20,
    ),
    "quick": DemoSize(
        image_size=64,
        n_train=12,
        n_test_good=4,
        n_test_per_defect=1,
        known_good=10,
        video_good=8,
        video_per_defect=1,
        false_alarm_rate=0.1,
        steps=2,
        prune_steps=2,
        batch_size=4,
        calib_count=4,
        guard_count=4,
        bench_batches=(1,),
        bench_runs=3,
        # two training steps leave the student's share near noise: let the validation
        # pseudo-anomalies choose between it and the combined map
        image_score="auto",
    ),
}


def prepare_out(out: Path, overwrite: bool) -> None:
    """A new or empty folder; a previous demo's folder only with ``overwrite`` (nothing that
    is not a demo folder is ever removed)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file", "give a folder for the demo")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DataError(
                f"--out {out} is not empty and holds no demo ({MARKER} is missing)",
                "give a new or empty folder; nothing was changed",
            )
        if not overwrite:
            raise DataError(
                f"--out {out} holds an earlier demo",
                "give --overwrite to replace it, or another --out",
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


class Demo:
    def __init__(
        self,
        out: Path,
        size: str = "full",
        console: Console | None = None,
        threads: int = 0,
        overwrite: bool = False,
    ):
        self.out, self.size_name, self.size = Path(out), size, SIZES[size]
        self.console = console or Console(stderr=True)
        self.threads, self.overwrite = threads, overwrite
        self.steps: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    # -- helpers ------------------------------------------------------------------------------

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out)).as_posix()

    def step(self, name: str, command: str, work: Callable[[], Any]) -> Any:
        self.console.rule(f"[bold]{len(self.steps) + 1}/{STEP_COUNT} {name}")
        t0 = time.perf_counter()
        value = work()
        seconds = round(time.perf_counter() - t0, 1)
        self.steps.append({"step": name, "command": command, "seconds": seconds})
        self.console.print(f"{name}: {seconds:.1f} s (total {self.elapsed():.0f} s)")
        return value

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def cli(self, args: list[str], log: Path, watch: Callable[[], int] | None = None, total=0):
        """`dmgrd-edge ARGS` in its own process (what a user would type), output in ``log``;
        with ``watch``, a progress bar of watch() out of ``total``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "dmgrd_edge.cli", *args]
        with open(log, "wb") as handle:
            proc = subprocess.Popen(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if os.name == "posix" else None,
            )
            if watch is not None:
                with Progress(
                    TextColumn(args[0]),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=self.console,
                ) as bar:
                    task = bar.add_task("", total=total)
                    while proc.poll() is None:
                        bar.update(task, completed=watch())
                        time.sleep(0.2)
                    bar.update(task, completed=watch())
            code = proc.wait()
        if code:
            tail = log.read_text(errors="replace").strip().splitlines()[-8:]
            raise DmgrdError(
                f"dmgrd-edge {args[0]} failed (exit {code}): " + " | ".join(tail),
                f"the whole output is in {log}",
            )
        return log.read_text(errors="replace")

    # -- the steps ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        prepare_out(self.out, self.overwrite)
        s, out = self.size, self.out
        atomic_write_bytes(out / MARKER, json.dumps({"status": "running"}).encode())
        self.console.print(
            f"[bold]dmgrd-edge demo[/] ({self.size_name}: {s.image_size} px, {s.steps} training "
            f"steps) -> {out}"
        )
        line, camera = out / "data" / "line", out / "data" / "camera"
        self.step(
            "generate line data",
            f"dmgrd-edge generate-data {self.rel(line)} --categories {CATEGORY} --size "
            f"{s.image_size} --n-train {s.n_train}",
            lambda: self.generate(line, camera),
        )
        video = out / "line.avi"
        truth = self.step(
            "make a video of the line",
            "(frames of the camera set, seeded order; the known-good frames recorded the same way)",
            lambda: self.video(camera, video),
        )
        sweep = Sweep(self.sweep_config(line), self.console)
        sweep.start()
        default = Variant("efficientnet_lite0", "default", 0.0, "int8")
        checkpoint = self.step(
            "train the default model",
            f"dmgrd-edge train --data {self.rel(line)} --category {CATEGORY} --image-size "
            f"{s.image_size} --steps {s.steps}{self.image_score_option}",
            lambda: sweep.train(default),
        )
        self.step(
            "evaluate it",
            f"dmgrd-edge eval {self.rel(checkpoint)}",
            lambda: sweep.evaluate(default, checkpoint),
        )
        exported = self.step(
            "export fp32 and INT8",
            f"dmgrd-edge export {self.rel(checkpoint)} --int8 --out BUNDLE",
            lambda: sweep.export(default, checkpoint),
        )
        bundle = out / "bundle"
        threshold = self.step(
            "calibrate the threshold on known-good frames",
            "dmgrd-edge calibrate-threshold bundle --source known_good.avi "
            f"--false-alarm-rate {s.false_alarm_rate:g}",
            lambda: self.calibrate(exported, bundle, camera),
        )
        stream = self.step(
            "stream the video through the runtime",
            "dmgrd-edge run bundle --source line.avi --sink events.jsonl --sink folder://ng_frames "
            "--sink stream_overlay.avi --stats-json stream_stats.json --headless",
            lambda: self.stream(bundle, video, len(truth)),
        )
        report = self.step(
            "sweep: pruning 0 / 50 % x fp32 / INT8, then the report",
            f"dmgrd-edge sweep --data {self.rel(line)} --category {CATEGORY} --ratios 0,0.5 "
            f"--precisions fp32,int8{self.image_score_option} --out sweep",
            sweep.run,
        )
        summary = self.summarize(truth, threshold, stream, report, sweep, checkpoint)
        atomic_write_bytes(out / MARKER, json.dumps(summary, indent=2).encode())
        atomic_write_bytes(out / "index.html", index_html(summary).encode())
        return summary

    @property
    def image_score_option(self) -> str:
        """The ``--image-score`` the shown commands need, where the demo's differs."""
        chosen = self.size.image_score
        return "" if chosen == ModelConfig.image_score else f" --image-score {chosen}"

    def sweep_config(self, line: Path) -> SweepConfig:
        s = self.size
        return SweepConfig(
            data=str(line),
            category=CATEGORY,
            out=str(self.out / "sweep"),
            backbones=("efficientnet_lite0",),
            models=("default",),
            ratios=(0.0, 0.5),
            precisions=("fp32", "int8"),
            image_size=s.image_size,
            steps=s.steps,
            image_score=s.image_score,
            batch_size=s.batch_size,
            prune_steps=s.prune_steps,
            calib_count=s.calib_count,
            guard_count=s.guard_count,
            bench_batches=s.bench_batches,
            bench_runs=s.bench_runs,
            threads=self.threads,
            device="cpu",
        )

    def generate(self, line: Path, camera: Path) -> None:
        from dmgrd_edge.data.synthetic import generate_line_data

        s = self.size
        generate_line_data(
            line, [CATEGORY], s.n_train, s.n_test_good, s.n_test_per_defect, s.image_size, seed=0
        )
        # the camera: other parts of the same line (another seed), never seen in training
        generate_line_data(
            camera,
            [CATEGORY],
            s.known_good,
            s.video_good,
            s.video_per_defect,
            s.image_size,
            seed=1,
        )

    def video(self, camera: Path, video: Path) -> list[dict[str, Any]]:
        from dmgrd_edge.data.imageio import read_image
        from dmgrd_edge.runtime.avi import MjpegAviWriter

        test = camera / CATEGORY / "test"
        frames = sorted(test.glob("*/*.png"))
        order = np.random.default_rng(7).permutation(len(frames))
        truth = []
        writer = MjpegAviWriter(video, fps=10.0, quality=95)
        try:
            for number, i in enumerate(order):
                path = frames[int(i)]
                writer.write(read_image(path))
                truth.append({"frame": number, "truth": path.parent.name, "image": self.rel(path)})
        finally:
            writer.close()
        atomic_write_bytes(self.out / "video_truth.json", json.dumps(truth, indent=1).encode())
        # the known-good frames as the same camera records them: a threshold calibrated on
        # the PNG files would sit below the scores the Motion-JPEG frames get
        writer = MjpegAviWriter(self.out / "known_good.avi", fps=10.0, quality=95)
        try:
            for path in sorted((camera / CATEGORY / "train" / "good").glob("*.png")):
                writer.write(read_image(path))
        finally:
            writer.close()
        return truth

    def calibrate(self, exported: Path, bundle: Path, camera: Path) -> dict[str, Any]:
        shutil.copytree(exported, bundle)
        text = self.cli(
            [
                "calibrate-threshold",
                str(bundle),
                "--source",
                str(self.out / "known_good.avi"),
                "--false-alarm-rate",
                f"{self.size.false_alarm_rate:g}",
            ],
            self.out / "logs" / "calibrate-threshold.log",
        )
        summary = json.loads(text[text.index("{") : text.rindex("}") + 1])
        atomic_write_bytes(self.out / "threshold.json", json.dumps(summary, indent=2).encode())
        return summary

    def stream(self, bundle: Path, video: Path, frames: int) -> dict[str, Any]:
        events = self.out / "events.jsonl"

        def count() -> int:
            try:
                return events.read_bytes().count(b"\n")
            except OSError:
                return 0

        args = [
            "run",
            str(bundle),
            "--source",
            str(video),
            "--sink",
            str(events),
            "--sink",
            f"folder://{self.out / 'ng_frames'}",
            "--sink",
            str(self.out / "stream_overlay.avi"),
            "--stats-json",
            str(self.out / "stream_stats.json"),
            "--headless",
        ]
        if self.threads:
            args += ["--threads", str(self.threads)]
        self.cli(args, self.out / "logs" / "run.log", count, frames)
        return json.loads((self.out / "stream_stats.json").read_text())

    # -- what it found ----------------------------------------------------------------------------

    def summarize(self, truth, threshold, stream, report, sweep: Sweep, checkpoint) -> dict:
        from dmgrd_edge.runtime.device_info import cpu_model

        out = self.out
        events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines() if x]
        decided = {e["frame"]: e for e in events}
        defective = [t for t in truth if t["truth"] != "good"]
        good = [t for t in truth if t["truth"] == "good"]
        found = [t for t in defective if decided.get(t["frame"], {}).get("decision") == "NG"]
        false_alarms = [t for t in good if decided.get(t["frame"], {}).get("decision") == "NG"]
        unjudged = [t for t in truth if t["frame"] not in decided]
        ng_files = sorted((out / "ng_frames").glob("*.png"))
        truth_of = {t["frame"]: t["truth"] for t in truth}
        ng_saved = []
        for path in ng_files:  # FolderSink names: <run>_frame<NNNNNNNN>_<score>.png
            frame = int(path.name.split("_frame")[1].split("_")[0])
            ng_saved.append({"path": self.rel(path), "frame": frame, "truth": truth_of.get(frame)})
        rows = []
        for v in sweep.variants:
            result = json.loads(sweep.paths.result(v).read_text())
            acc, lat = result.get("accuracy", {}), result["latency"][0]
            rows.append(
                {
                    "variant": v.id,
                    "label": f"{v.label} {v.precision}",
                    "file": result["backend"]["file"],
                    "i_auroc": acc.get("i_auroc"),
                    "p_auroc": acc.get("p_auroc"),
                    "pro_30": acc.get("pro_30"),
                    "ms_b1_p50": lat["ms_p50"],
                    "images_per_s_b1": lat["images_per_s"],
                    "result": self.rel(sweep.paths.result(v)),
                }
            )
        default_eval = sweep.paths.eval(Variant("efficientnet_lite0", "default", 0.0, "fp32"))
        heatmaps = sorted((default_eval / "overlays").rglob("*.png"))
        artefacts = [
            ("data/line", "training data: good parts, test split with masks (MVTec layout)"),
            ("data/camera", "frames of the line the model never trained on"),
            (
                "known_good.avi",
                "the known-good frames as the camera records them, for the threshold",
            ),
            (self.rel(checkpoint), "checkpoint of the default model (PyTorch)"),
            ("bundle/manifest.json", "deployment bundle: manifest (hashes, thresholds, guard)"),
            ("bundle/model.onnx", "fp32 ONNX model, memory bank inside"),
            ("bundle/model.int8.onnx", "INT8 Q/DQ model for TensorRT"),
            ("bundle/model.int8-cpu.onnx", "INT8 model for ONNX Runtime's CPU provider"),
            ("threshold.json", "threshold calibrated on known-good frames"),
            ("line.avi", "the generated video streamed (Motion-JPEG)"),
            ("video_truth.json", "what each video frame really shows"),
            ("events.jsonl", "the runtime's decision for every frame"),
            ("ng_frames", "NG frames with heat-map overlays and regions"),
            ("stream_overlay.avi", "recording of the stream with overlays"),
            ("stream_stats.json", "latency statistics of the stream"),
            (self.rel(default_eval / "eval.json"), "PyTorch evaluation of the default model"),
            (self.rel(default_eval / "overlays"), "heat-map examples per defect kind"),
            *[(r["result"], f"sweep result: {r['label']}") for r in rows],
            ("sweep/report/report.html", "trade-off report (plot and sortable table)"),
            ("sweep/report/report.md", "trade-off report, Markdown"),
            ("sweep/report/report.csv", "trade-off report, CSV"),
            ("sweep/report/pareto.png", "latency vs accuracy plot"),
            ("logs/calibrate-threshold.log", "output of calibrate-threshold"),
            ("logs/run.log", "output of the runtime"),
            (MARKER, "this summary as JSON"),
        ]
        return {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "size": self.size_name,
            "settings": asdict(self.size),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
            "seconds": round(self.elapsed(), 1),
            "steps": self.steps,
            "stream": {
                "frames": len(truth),
                "judged": len(events),
                "unjudged": len(unjudged),
                "defective_frames": len(defective),
                "ng_found": len(found),
                "missed": [t["frame"] for t in defective if t not in found],
                "false_alarms": [t["frame"] for t in false_alarms],
                "ng_frames_saved": ng_saved,
                "fps": stream.get("fps"),
                "backend": stream.get("backend", {}),
                "threshold": stream.get("threshold"),
                "end_to_end_ms_p50": stream.get("stages_ms", {}).get("end_to_end", {}).get("p50"),
                "inference_ms_p50": stream.get("stages_ms", {}).get("inference", {}).get("p50"),
            },
            "threshold": threshold,
            "sweep": rows,
            "recommended": report["recommended"],
            "heatmaps": [self.rel(p) for p in heatmaps[:6]],
            "artefacts": [{"path": p, "what": w} for p, w in artefacts],
        }


STEP_COUNT = 8  # the self.step calls of Demo.run


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}"
    "table.steps td:nth-child(2),table.steps th:nth-child(2){text-align:left}"
    ".thumbs{display:flex;flex-wrap:wrap;gap:.5em}.thumbs figure{margin:0;font-size:small}"
    ".thumbs img{height:10em;display:block}img.plot{max-width:100%}"
    ".ok{color:#1a7f37}.bad{color:#b42318}code{background:#f4f4f4;padding:0 .2em}"
)


def index_html(s: dict[str, Any]) -> str:
    """The demo's summary page: relative links only, so the folder can be moved or served."""
    e = html.escape
    st = s["stream"]

    def link(path: str, text: str | None = None) -> str:
        return f'<a href="{e(path)}">{e(text or path)}</a>'

    steps = "".join(
        f"<tr><td>{i}. {e(x['step'])}</td><td><code>{e(x['command'])}</code></td>"
        f"<td>{x['seconds']:.1f}</td></tr>"
        for i, x in enumerate(s["steps"], 1)
    )
    sweep = "".join(
        f"<tr><td>{link(r['result'], r['label'])}</td><td>{e(r['file'])}</td>"
        + "".join(f"<td>{percent(r[k], 1)}</td>" for k in ("i_auroc", "p_auroc", "pro_30"))
        + f"<td>{r['ms_b1_p50']:.2f}</td><td>{r['images_per_s_b1']:.1f}</td></tr>"
        for r in s["sweep"]
    )
    ng = "".join(
        f'<figure><a href="{e(n["path"])}"><img src="{e(n["path"])}" '
        f'alt="NG frame {n["frame"]}"></a><figcaption>frame {n["frame"]}: '
        f"<span class={'bad' if n['truth'] == 'good' else 'ok'}>{e(str(n['truth']))}</span>"
        "</figcaption></figure>"
        for n in st["ng_frames_saved"][:12]
    )
    heat = "".join(
        f'<figure><a href="{e(p)}"><img src="{e(p)}" alt="heat map {e(Path(p).name)}"></a>'
        f"<figcaption>{e(Path(p).parent.name)}/{e(Path(p).name)}</figcaption></figure>"
        for p in s["heatmaps"]
    )
    artefacts = (
        "".join(f"<li>{link(a['path'])}: {e(a['what'])}</li>" for a in s["artefacts"])
        + f"<li>{link('index.html')}: this page</li>"
    )
    recommended = "; ".join(f"{e(d)}: <b>{e(n)}</b>" for d, n in s["recommended"].items())
    found_class = "ok" if st["ng_found"] == st["defective_frames"] else "bad"
    backend = st["backend"]
    return (
        "<!doctype html><meta charset=utf-8><title>dmgrd-edge demo</title>"
        f"<style>{_CSS}</style><h1>dmgrd-edge demo</h1>"
        f"<p>{e(s['size'])} demo on {e(str(s['machine']['cpu']))} ({s['machine']['cores']} cores), "
        f"{s['seconds']:.0f} s in all, {e(s['created'])}. Everything below was made by this run "
        "from generated data; no dataset, GPU or network was used.</p>"
        "<h2>What ran</h2><table class=steps><tr><th>step</th><th>the command it stands for</th>"
        f"<th>s</th></tr>{steps}</table>"
        "<h2>The line: the video through the runtime</h2>"
        f"<p>{st['frames']} frames ({st['defective_frames']} with a defect), "
        f"{st['judged']} judged by {e(str(backend.get('file', '?')))} on "
        f"{e(str(backend.get('backend', '?')))} at threshold {st['threshold']:.4f} "
        f"(calibrated on {s['threshold']['count']} known-good frames). "
        f"<b class={found_class}>NG frames found: {st['ng_found']} of {st['defective_frames']}"
        f"</b>; false alarms on good frames: {len(st['false_alarms'])}"
        f"{', frames ' + e(str(st['false_alarms'])) if st['false_alarms'] else ''}; missed: "
        f"{len(st['missed'])}{', frames ' + e(str(st['missed'])) if st['missed'] else ''}. "
        f"The runtime's statistics: {st['fps']:.1f} frames/s (the file is read as fast as it "
        f"goes), capture to decision p50 {st['end_to_end_ms_p50']:.1f} ms, inference p50 "
        f"{st['inference_ms_p50']:.1f} ms. Each NG frame below with what the video really "
        "showed there (a defect kind, or good: a false alarm).</p>"
        f"<div class=thumbs>{ng}</div>"
        "<h2>Accuracy and latency per variant (the sweep)</h2>"
        "<table><tr><th>variant</th><th>file</th><th>I-AUC</th><th>P-AUC</th><th>PRO@0.3</th>"
        f"<th>p50 ms (batch 1)</th><th>img/s (batch 1)</th></tr>{sweep}</table>"
        f"<p>Recommended: {recommended}. Full report: {link('sweep/report/report.html')}.</p>"
        "<img class=plot src='sweep/report/pareto.png' alt='latency vs accuracy'>"
        "<h2>Heat maps of the default model (test split)</h2>"
        f"<div class=thumbs>{heat}</div>"
        f"<h2>Artefacts</h2><ul>{artefacts}</ul>"
    )


def console_summary(s: dict[str, Any]) -> str:
    st = s["stream"]
    best = max(s["sweep"], key=lambda r: r["pro_30"] or 0)
    lines = [
        f"demo finished in {s['seconds']:.0f} s",
        f"stream: {st['frames']} frames, NG found {st['ng_found']} of {st['defective_frames']} "
        f"defective, {len(st['false_alarms'])} false alarms, {st['fps']:.1f} fps",
        f"best PRO@0.3: {best['label']} {percent(best['pro_30'], 1)}, {best['ms_b1_p50']:.2f} ms",
        *(f"recommended on {d}: {n}" for d, n in s["recommended"].items()),
        f"summary page: {s['index']}",
    ]
    return "\n".join(lines)


def run_demo(
    out: Path,
    size: str = "full",
    console: Console | None = None,
    threads: int = DemoSettings.threads,
    overwrite: bool = DemoSettings.overwrite,
) -> dict[str, Any]:
    summary = Demo(out, size, console, threads, overwrite).run()
    summary["index"] = str(Path(out) / "index.html")
    return summary
