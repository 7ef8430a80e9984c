"""Latency/accuracy trade-off report across `dmgrd-edge bench` results (torch-free).

One row per bench result (a backbone x model file x backend on one device): latency at
batch 1, best throughput, memory, start-up, and accuracy when the bench had test data. A
variant is on the Pareto front when no other variant on the same device is at least as fast
and at least as accurate, and strictly better in one of the two. The recommendation is the
fastest variant whose accuracy is within ``max_drop`` points of the best one.

Outputs: report.md, report.csv, report.html (table + plot) and pareto.png (OpenCV drawing:
no plotting library needed on the Jetson).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_write_bytes, check_target
from .errors import ConfigError, DataError, choose

METRICS = {"pro_30": "PRO@0.3", "i_auroc": "I-AUC", "p_auroc": "P-AUC"}


@dataclass
class Variant:
    name: str
    device: str
    backbone: str
    image_size: int
    file: str
    precision: str
    backend: str
    ms_b1_p50: float
    ms_b1_p99: float
    best_images_per_s: float
    best_batch: int
    peak_host_rss_mib: float
    startup_s: float
    i_auroc: float | None
    p_auroc: float | None
    pro_30: float | None
    source: str
    pareto: bool = False
    label: str = ""  # what the variant is, without precision and file (backbone, pruning, --label)


def _device_label(device: dict, backend: dict) -> str:
    """Where the inference ran: the GPU for TensorRT and the CUDA/TensorRT providers, else the
    CPU; a Jetson adds its L4T release and power mode."""
    on_gpu = backend.get("backend") == "tensorrt" or any(
        p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in backend.get("providers", []))
    label = str(device.get("gpu") if on_gpu and device.get("gpu") else device.get("cpu") or "unknown device")
    jetson = device.get("jetson") or {}
    if jetson:
        mode = (jetson.get("nvpmodel") or "").splitlines()
        label += f" ({jetson.get('l4t', 'Jetson')}{', ' + mode[0] if mode else ''})"
    return label


def load_result(path: Path) -> Variant:
    """One `dmgrd-edge bench` JSON -> a Variant; a clear error for anything else."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"bench result not found: {path}",
                        "write one with dmgrd-edge bench BUNDLE --out FILE") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not a readable JSON file ({exc})",
                        "give files written by dmgrd-edge bench") from None
    if not isinstance(data, dict) or not {"latency", "backend", "model"} <= set(data) or not data["latency"]:
        raise DataError(f"{path} is not a dmgrd-edge bench result (needs 'latency', 'backend' and 'model')",
                        "give files written by dmgrd-edge bench BUNDLE --out FILE")
    rows = data["latency"]
    first = min(rows, key=lambda r: r["batch"])
    best = max(rows, key=lambda r: r["images_per_s"])
    accuracy = data.get("accuracy") or {}
    backend = data["backend"]
    model = data["model"]
    file_name = str(backend.get("file", "?"))
    pruning = data.get("pruning") or {}
    pruned = f" pruned {100 * float(pruning['ratio']):.0f}%" if pruning.get("ratio") else \
        (" pruned" if model.get("pruned_widths") else "")
    label = data.get("label") or f"{model.get('backbone', '?')}{pruned}"  # `dmgrd-edge bench --label`
    return Variant(
        name=f"{label} {backend.get('precision', '?')} ({file_name}, {backend.get('backend', '?')})",
        device=_device_label(data.get("device", {}), backend), backbone=str(model.get("backbone", "?")),
        image_size=int(model.get("image_size", 0)), file=file_name, precision=str(backend.get("precision", "?")),
        backend=str(backend.get("backend", "?")), ms_b1_p50=float(first["ms_p50"]), ms_b1_p99=float(first["ms_p99"]),
        best_images_per_s=float(best["images_per_s"]), best_batch=int(best["batch"]),
        peak_host_rss_mib=float(data.get("peak_host_rss_mib", float("nan"))),
        startup_s=float(data.get("startup_s", float("nan"))), i_auroc=accuracy.get("i_auroc"),
        p_auroc=accuracy.get("p_auroc"), pro_30=accuracy.get("pro_30"), source=Path(path).name, label=label)


def mark_pareto(variants: list[Variant], metric: str) -> None:
    """Per device: on the front unless another variant is no slower and no less accurate,
    and better in one. Variants without accuracy are judged on latency alone."""
    for v in variants:
        mine = getattr(v, metric)
        v.pareto = True
        for other in variants:
            if other is v or other.device != v.device:
                continue
            theirs = getattr(other, metric)
            if mine is None or theirs is None:
                dominated = other.ms_b1_p50 < v.ms_b1_p50 and mine is None and theirs is None
            else:
                dominated = (other.ms_b1_p50 <= v.ms_b1_p50 and theirs >= mine
                             and (other.ms_b1_p50 < v.ms_b1_p50 or theirs > mine))
            if dominated:
                v.pareto = False
                break


def recommend(variants: list[Variant], metric: str, max_drop: float) -> dict[str, Variant]:
    """Per device: the fastest variant within ``max_drop`` points of the most accurate one."""
    picks: dict[str, Variant] = {}
    for device in sorted({v.device for v in variants}):
        scored = [v for v in variants if v.device == device and getattr(v, metric) is not None]
        if not scored:
            continue
        best = max(getattr(v, metric) for v in scored)
        good = [v for v in scored if 100 * (best - getattr(v, metric)) <= max_drop + 1e-9]
        picks[device] = min(good, key=lambda v: v.ms_b1_p50)
    return picks


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


NOTES = ("Latency: backend call on a preprocessed batch (dmgrd-edge bench), median (p50) and p99 of repeated "
         "runs after warm-up. Accuracy: the bench's test set, numpy metrics. Latencies compare only within one "
         "device.")
COLUMNS = ("variant", "p50 ms (b1)", "p99 ms (b1)", "best img/s (batch)", "I-AUC", "P-AUC", "PRO@0.3",
           "peak RSS MiB", "start-up s", "Pareto")


def _cells(v: Variant) -> list[str]:
    return [v.name, f"{v.ms_b1_p50:.2f}", f"{v.ms_b1_p99:.2f}", f"{v.best_images_per_s:.1f} ({v.best_batch})",
            _pct(v.i_auroc), _pct(v.p_auroc), _pct(v.pro_30), f"{v.peak_host_rss_mib:.0f}", f"{v.startup_s:.2f}",
            "yes" if v.pareto else ""]


def to_markdown(variants: list[Variant], picks: dict[str, Variant], metric: str, max_drop: float) -> str:
    lines = ["# Latency / accuracy trade-off", ""]
    for device in sorted({v.device for v in variants}):
        lines += [f"## {device}", "", "| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
        for v in sorted((v for v in variants if v.device == device), key=lambda v: v.ms_b1_p50):
            lines.append("| " + " | ".join(_cells(v)) + " |")
        pick = picks.get(device)
        lines.append("")
        if pick is not None:
            points = "point" if max_drop == 1 else "points"
            lines.append(f"Recommended: **{pick.name}**, the fastest within {max_drop:g} {points} of the best "
                         f"{METRICS[metric]} on this device.")
        else:
            lines.append(f"No recommendation: no result here has {METRICS[metric]} (run bench with --data).")
        lines.append("")
    lines.append(NOTES)
    return "\n".join(lines) + "\n"


def to_csv(variants: list[Variant]) -> str:
    buffer = io.StringIO()
    fields = list(asdict(variants[0]).keys()) if variants else []
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for v in variants:
        writer.writerow(asdict(v))
    return buffer.getvalue()


def _short(file_name: str) -> str:
    """'model.int8-cpu.onnx' -> 'int8-cpu', 'model.onnx' -> 'fp32'; engines keep their precision field."""
    stem = Path(file_name).name.removeprefix("model.")
    first = stem.split(".")[0]
    return "fp32" if first in ("onnx", "") else first


def draw_pareto(variants: list[Variant], metric: str, size: tuple[int, int] = (900, 560)) -> np.ndarray:
    """Scatter of batch-1 latency (x) against accuracy (y), Pareto front joined, one colour
    per device; drawn with OpenCV. Variants without accuracy are left out of the plot."""
    width, height = size
    left, right, top, bottom = 80, 30, 60, 70
    image = np.full((height, width, 3), 255, np.uint8)
    points = [v for v in variants if getattr(v, metric) is not None]
    title = f"{METRICS[metric]} vs batch-1 latency (p50)"
    cv2.putText(image, title, (left, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    if not points:
        cv2.putText(image, "no accuracy in these results (bench --data)", (left + 20, height // 2),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 160), 1, cv2.LINE_AA)
        return image
    xs = np.array([v.ms_b1_p50 for v in points])
    ys = np.array([100 * getattr(v, metric) for v in points])
    x_lo, x_hi = 0.0, float(xs.max()) * 1.15
    y_lo, y_hi = float(ys.min()) - 1.0, float(ys.max()) + 1.0

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = left + (x - x_lo) / max(x_hi - x_lo, 1e-9) * (width - left - right)
        py = height - bottom - (y - y_lo) / max(y_hi - y_lo, 1e-9) * (height - top - bottom)
        return int(round(px)), int(round(py))

    for i in range(5):  # axis ticks
        x = x_lo + (x_hi - x_lo) * i / 4
        y = y_lo + (y_hi - y_lo) * i / 4
        px, _ = to_px(x, y_lo)
        _, py = to_px(x_lo, y)
        cv2.putText(image, f"{x:.1f}", (px - 14, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1)
        cv2.putText(image, f"{y:.1f}", (left - 50, py + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1)
    cv2.putText(image, f"{METRICS[metric]} %", (8, top - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "ms per image (batch 1, p50)", (width // 2 - 100, height - 20), cv2.FONT_HERSHEY_SIMPLEX,
                0.5, (0, 0, 0), 1, cv2.LINE_AA)
    palette = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    devices = sorted({v.device for v in points})
    placed: list[tuple[int, int, int, int]] = []  # label boxes drawn so far: later ones move off them

    def free_spot(xs: list[int], y: int, w: int) -> tuple[int, int]:
        """The first place near the point (right or left of it, then further up or down)
        where the label overlaps no label drawn before; the first candidate if none is free."""
        for dy in (0, 14, -14, 28, -28, 42, -42, 56, -56, 70, -70, 84, -84):
            for x in xs:
                box = (x, y + dy - 11, x + w, y + dy + 3)
                if top < box[1] and box[3] < height - bottom and all(
                        box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed):
                    placed.append(box)
                    return x, y + dy
        return xs[0], y
    for d, device in enumerate(devices):
        colour = palette[d % len(palette)]  # the canvas is RGB; converted to BGR when encoded
        front = sorted((v for v in points if v.device == device and v.pareto), key=lambda v: v.ms_b1_p50)
        for a, b in zip(front, front[1:]):
            cv2.line(image, to_px(a.ms_b1_p50, 100 * getattr(a, metric)),
                     to_px(b.ms_b1_p50, 100 * getattr(b, metric)), colour, 1, cv2.LINE_AA)
        for v in (v for v in points if v.device == device):
            centre = to_px(v.ms_b1_p50, 100 * getattr(v, metric))
            cv2.circle(image, centre, 6 if v.pareto else 4, colour, -1 if v.pareto else 1, cv2.LINE_AA)
            label = f"{v.label or v.backbone} {_short(v.file)}"
            (text_w, _), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            sides = [centre[0] + 8, centre[0] - 8 - text_w]
            fits = [x for x in sides if left < x and x + text_w < width - right] or sides[1:]
            x, y = free_spot(fits, centre[1] - 8, text_w)
            if y != centre[1] - 8:  # moved off its point: a thin line says whose label it is
                end = (x - 2, y - 4) if x > centre[0] else (x + text_w + 2, y - 4)
                cv2.line(image, centre, end, tuple(int(c + (255 - c) * 0.6) for c in colour), 1, cv2.LINE_AA)
            cv2.putText(image, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
        if len(devices) > 1:
            cv2.putText(image, device[:60], (left + 10, top + 18 + 18 * d), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour,
                        1, cv2.LINE_AA)
    return image


def to_html(variants: list[Variant], png: bytes) -> str:
    rows = []
    for v in sorted(variants, key=lambda v: (v.device, v.ms_b1_p50)):
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in [v.device] + _cells(v))
        rows.append(f"<tr{' class=pareto' if v.pareto else ''}>{cells}</tr>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("device",) + COLUMNS)
    picture = base64.b64encode(png).decode()
    return ("<!doctype html><meta charset=utf-8><title>dmgrd-edge trade-off report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:nth-child(-n+2){text-align:left}"
            "tr.pareto{font-weight:bold}</style>"
            "<h1>Latency / accuracy trade-off</h1>"
            f"<img alt='trade-off plot' src='data:image/png;base64,{picture}'>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            f"<p>{html.escape(NOTES)}</p>")


def write_report(results: list[Path], out_dir: Path, metric: str = "pro_30", max_drop: float = 1.0) -> dict:
    choose("metric", metric, tuple(METRICS))
    if max_drop < 0:
        raise ConfigError(f"--max-drop must be >= 0 points, got {max_drop}")
    if not results:
        raise ConfigError("no bench results given", "give one or more JSON files from dmgrd-edge bench")
    variants = [load_result(p) for p in results]
    mark_pareto(variants, metric)
    picks = recommend(variants, metric, max_drop)
    out = Path(out_dir)
    paths = {"md": out / "report.md", "csv": out / "report.csv", "html": out / "report.html",
             "png": out / "pareto.png"}
    for path in paths.values():  # all or none: no report set replaced in part
        check_target(path)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(variants, picks, metric, max_drop)
    ok, png = cv2.imencode(".png", cv2.cvtColor(draw_pareto(variants, metric), cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError("could not encode the trade-off plot as PNG")
    for key, data in (("md", markdown.encode()), ("csv", to_csv(variants).encode()),
                      ("html", to_html(variants, png.tobytes()).encode()), ("png", png.tobytes())):
        atomic_write_bytes(paths[key], data)  # an earlier report is replaced whole or kept
    return {"paths": paths, "variants": variants, "recommended": picks}
