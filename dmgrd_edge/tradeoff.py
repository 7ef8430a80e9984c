"""Latency/accuracy trade-off report across `dmgrd-edge bench` results (torch-free).

One row per bench result (a backbone x model file x backend on one device): latency at
batch 1, best throughput, memory, start-up, and accuracy when the bench had test data. A
variant is on the Pareto front when no other variant on the same device is at least as fast
and at least as accurate, and strictly better in one of the two. The recommendation is the
fastest variant whose accuracy is within ``max_drop`` points of the best one; with a latency
budget, the report also names the most accurate variant whose batch-1 p50 fits it.

Outputs: report.md, report.csv, report.html (plot + sortable table, self-contained) and
pareto.png (matplotlib, Agg: one row of panels per device, latency vs PRO@0.3 and vs I-AUC).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import atomic_write_bytes, check_target
from .errors import ConfigError, DataError, choose
from .options import ReportSettings
from .report import percent
from .schema import bench_result

METRICS = {"pro_30": "PRO@0.3", "i_auroc": "I-AUC", "p_auroc": "P-AUC"}


@dataclass(kw_only=True)
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
        p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        for p in backend.get("providers", [])
    )
    label = str(
        device.get("gpu") if on_gpu and device.get("gpu") else device.get("cpu") or "unknown device"
    )
    jetson = device.get("jetson") or {}
    if jetson:
        mode = _power_mode(jetson.get("nvpmodel"))
        label += f" ({jetson.get('l4t', 'Jetson')}{', ' + mode if mode else ''})"
    return label


def _power_mode(nvpmodel: dict | str | None) -> str:
    """The power mode's name from a bench JSON: parsed ({"mode", "id", "raw"}, written since
    the device record parses `nvpmodel -q`) or the raw text (older results); the same name
    for both, so one device's results stay together."""
    if isinstance(nvpmodel, dict):
        if nvpmodel.get("mode"):
            return str(nvpmodel["mode"])
        nvpmodel = nvpmodel.get("raw")
    lines = str(nvpmodel or "").strip().splitlines()
    return lines[0].removeprefix("NV Power Mode:").strip() if lines else ""


def load_result(path: Path) -> Variant:
    """One `dmgrd-edge bench` JSON -> a Variant; a clear error for anything else."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(
            f"bench result not found: {path}", "write one with dmgrd-edge bench BUNDLE --out FILE"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path} is not a readable JSON file ({exc})", "give files written by dmgrd-edge bench"
        ) from None
    if (
        not isinstance(data, dict)
        or not {"latency", "backend", "model"} <= set(data)
        or not data["latency"]
    ):
        raise DataError(
            f"{path} is not a dmgrd-edge bench result (needs 'latency', 'backend' and 'model')",
            "give files written by dmgrd-edge bench BUNDLE --out FILE",
        )
    result = bench_result(data, str(path))
    first = min(result.latency, key=lambda r: r.batch)
    best = max(result.latency, key=lambda r: r.images_per_s)
    backend, model = result.backend, result.model
    file_name = str(backend.get("file", "?"))
    pruned = (
        f" pruned {100 * result.pruning_ratio:.0f}%"
        if result.pruning_ratio
        else (" pruned" if model.get("pruned_widths") else "")
    )
    label = result.label or f"{model.get('backbone', '?')}{pruned}"  # `dmgrd-edge bench --label`
    kind, precision = backend.get("backend", "?"), backend.get("precision", "?")
    return Variant(
        name=f"{label} {precision} ({file_name}, {kind})",
        device=_device_label(result.device, backend),
        backbone=str(model.get("backbone", "?")),
        image_size=int(model.get("image_size", 0)),
        file=file_name,
        precision=str(backend.get("precision", "?")),
        backend=str(backend.get("backend", "?")),
        ms_b1_p50=first.ms_p50,
        ms_b1_p99=first.ms_p99,
        best_images_per_s=best.images_per_s,
        best_batch=best.batch,
        peak_host_rss_mib=result.peak_host_rss_mib,
        startup_s=result.startup_s,
        i_auroc=result.accuracy.get("i_auroc"),
        p_auroc=result.accuracy.get("p_auroc"),
        pro_30=result.accuracy.get("pro_30"),
        source=Path(path).name,
        label=label,
    )


def pareto_flags(variants: list[Variant], metric: str) -> list[bool]:
    """Per device: on the front unless another variant is no slower and no less accurate,
    and better in one. Variants without accuracy are judged on latency alone."""
    flags = []
    for v in variants:
        mine = getattr(v, metric)
        dominated = False
        for other in variants:
            if other is v or other.device != v.device:
                continue
            theirs = getattr(other, metric)
            if mine is None or theirs is None:
                dominated = other.ms_b1_p50 < v.ms_b1_p50 and mine is None and theirs is None
            else:
                dominated = (
                    other.ms_b1_p50 <= v.ms_b1_p50
                    and theirs >= mine
                    and (other.ms_b1_p50 < v.ms_b1_p50 or theirs > mine)
                )
            if dominated:
                break
        flags.append(not dominated)
    return flags


def mark_pareto(variants: list[Variant], metric: str) -> None:
    """Sets ``pareto`` on each variant (the front of ``metric``, see pareto_flags)."""
    for v, flag in zip(variants, pareto_flags(variants, metric)):
        v.pareto = flag


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


def within_budget(
    variants: list[Variant], metric: str, budget_ms: float
) -> dict[str, Variant | None]:
    """Per device: the most accurate variant (then the fastest) whose batch-1 p50 latency is
    at most ``budget_ms``; None where no variant with accuracy fits."""
    picks: dict[str, Variant | None] = {}
    for device in sorted({v.device for v in variants}):
        fits = [
            v
            for v in variants
            if v.device == device and v.ms_b1_p50 <= budget_ms and getattr(v, metric) is not None
        ]
        picks[device] = min(fits, key=lambda v: (-getattr(v, metric), v.ms_b1_p50), default=None)
    return picks


def budget_sentence(
    variants: list[Variant], device: str, pick: Variant | None, metric: str, budget_ms: float
) -> str:
    """What the budget choice is on ``device``, or why there is none, in one sentence."""
    if pick is not None:
        return (
            f"Within {budget_ms:g} ms (batch-1 p50): **{pick.name}**, the most accurate "
            f"({METRICS[metric]} {percent(getattr(pick, metric))}, {pick.ms_b1_p50:.2f} ms)."
        )
    mine = [v for v in variants if v.device == device]
    fastest = min(mine, key=lambda v: v.ms_b1_p50)
    if fastest.ms_b1_p50 > budget_ms:
        return (
            f"No variant fits {budget_ms:g} ms (batch-1 p50) on this device: the fastest, "
            f"{fastest.name}, takes {fastest.ms_b1_p50:.2f} ms."
        )
    return (
        f"No variant within {budget_ms:g} ms has {METRICS[metric]} to rank by "
        "(run bench with --data)."
    )


NOTES = (
    "Latency: backend call on a preprocessed batch (dmgrd-edge bench), median (p50) and p99 of "
    "repeated runs after warm-up. Accuracy: the bench's test set, numpy metrics. Latencies "
    "compare only within one device."
)
COLUMNS = (
    "variant",
    "p50 ms (b1)",
    "p99 ms (b1)",
    "best img/s (batch)",
    "I-AUC",
    "P-AUC",
    "PRO@0.3",
    "peak RSS MiB",
    "start-up s",
    "Pareto",
)


def _cells(v: Variant) -> list[str]:
    return [
        v.name,
        f"{v.ms_b1_p50:.2f}",
        f"{v.ms_b1_p99:.2f}",
        f"{v.best_images_per_s:.1f} ({v.best_batch})",
        percent(v.i_auroc),
        percent(v.p_auroc),
        percent(v.pro_30),
        f"{v.peak_host_rss_mib:.0f}",
        f"{v.startup_s:.2f}",
        "yes" if v.pareto else "",
    ]


def _sort_keys(v: Variant) -> list[str]:
    """Raw values the HTML table sorts by, one per column ('' where there is none)."""

    def num(x: float | None) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))

    return [
        v.name,
        num(v.ms_b1_p50),
        num(v.ms_b1_p99),
        num(v.best_images_per_s),
        num(v.i_auroc),
        num(v.p_auroc),
        num(v.pro_30),
        num(v.peak_host_rss_mib),
        num(v.startup_s),
        "1" if v.pareto else "0",
    ]


def _recommend_sentence(pick: Variant | None, metric: str, max_drop: float) -> str:
    if pick is None:
        return f"No recommendation: no result here has {METRICS[metric]} (run bench with --data)."
    points = "point" if max_drop == 1 else "points"
    return (
        f"Recommended: **{pick.name}**, the fastest within {max_drop:g} {points} of the best "
        f"{METRICS[metric]} on this device."
    )


def to_markdown(
    variants: list[Variant],
    picks: dict[str, Variant],
    metric: str,
    max_drop: float,
    budget_ms: float | None = None,
    budget_picks: dict[str, Variant | None] | None = None,
) -> str:
    lines = [
        "# Latency / accuracy trade-off",
        "",
        "![latency vs accuracy per device](pareto.png)",
        "",
    ]
    for device in sorted({v.device for v in variants}):
        lines += [
            f"## {device}",
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|---|" + "---:|" * (len(COLUMNS) - 1),
        ]
        for v in sorted((v for v in variants if v.device == device), key=lambda v: v.ms_b1_p50):
            lines.append("| " + " | ".join(_cells(v)) + " |")
        lines += ["", _recommend_sentence(picks.get(device), metric, max_drop)]
        if budget_ms is not None:
            pick = (budget_picks or {}).get(device)
            lines += ["", budget_sentence(variants, device, pick, metric, budget_ms)]
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


_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.tabIndex = 0;
    function sort() {
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var numeric = th.getAttribute("data-type") === "num";
      function key(row) { return row.cells[col].getAttribute("data-sort"); }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return (x === "") - (y === ""); }  // empty cells last
        var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return up ? c : -c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
  });
});
"""

_CSS = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}"
    "th{cursor:pointer;background:#f4f4f4;user-select:none}"
    "th[aria-sort=ascending]::after{content:' \\25B2'}"
    "th[aria-sort=descending]::after{content:' \\25BC'}"
    "tr.pareto{font-weight:bold}img{max-width:100%}"
)


def to_html(variants: list[Variant], png: bytes, sentences: list[str] | None = None) -> str:
    """Self-contained page: the plot inline, a table sorted by clicking a column head."""
    rows = []
    for v in sorted(variants, key=lambda v: (v.device, v.ms_b1_p50)):
        texts, keys = [v.device] + _cells(v), [v.device] + _sort_keys(v)
        cells = "".join(
            f'<td data-sort="{html.escape(k)}">{html.escape(t)}</td>' for t, k in zip(texts, keys)
        )
        rows.append(f"<tr{' class=pareto' if v.pareto else ''}>{cells}</tr>")
    text_columns = ("device", "variant")
    head = "".join(
        f"<th scope=col{'' if c in text_columns else ' data-type=num'}>{html.escape(c)}</th>"
        for c in ("device",) + COLUMNS
    )
    picture = base64.b64encode(png).decode()
    notes = "".join(f"<p>{_bold(s)}</p>" for s in sentences or [])
    return (
        "<!doctype html><meta charset=utf-8><title>dmgrd-edge trade-off report</title>"
        f"<style>{_CSS}</style>"
        "<h1>Latency / accuracy trade-off</h1>"
        f"<img alt='latency vs accuracy per device' src='data:image/png;base64,{picture}'>"
        f"{notes}<p>Click a column head to sort (again to reverse).</p>"
        f"<table class=sortable><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<p>{html.escape(NOTES)}</p><script>{_SORT_JS}</script>"
    )


def _bold(sentence: str) -> str:
    """Markdown **x** -> <b>x</b>, the rest escaped."""
    parts = html.escape(sentence).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


PLOT_METRICS = ("pro_30", "i_auroc")  # the panels per device; the report's metric comes first


def write_report(
    results: list[Path],
    out_dir: Path,
    metric: str = ReportSettings.metric,
    max_drop: float = ReportSettings.max_drop,
    budget_ms: float | None = None,
) -> dict:
    choose("metric", metric, tuple(METRICS))
    if max_drop < 0:
        raise ConfigError(f"--max-drop must be >= 0 points, got {max_drop}")
    if budget_ms is not None and not budget_ms > 0:
        raise ConfigError(
            f"--budget-ms must be a latency > 0 ms, got {budget_ms}",
            "give the batch-1 time one image may take, e.g. --budget-ms 10",
        )
    if not results:
        raise ConfigError(
            "no bench results given", "give one or more JSON files from dmgrd-edge bench"
        )
    from .tradeoff_plot import render

    variants = [load_result(p) for p in results]
    mark_pareto(variants, metric)
    picks = recommend(variants, metric, max_drop)
    budget_picks = within_budget(variants, metric, budget_ms) if budget_ms is not None else {}
    out = Path(out_dir)
    paths = {
        "md": out / "report.md",
        "csv": out / "report.csv",
        "html": out / "report.html",
        "png": out / "pareto.png",
    }
    for path in paths.values():  # all or none: no report set replaced in part
        check_target(path)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(variants, picks, metric, max_drop, budget_ms, budget_picks)
    metrics = (metric,) + tuple(m for m in PLOT_METRICS if m != metric)
    points = "point" if max_drop == 1 else "points"
    rec_text = f"recommended: fastest within {max_drop:g} {points} of the best {METRICS[metric]}"
    png = render(variants, metrics, picks, budget_ms, budget_picks, rec_text)
    sentences = []
    for device in sorted({v.device for v in variants}):
        sentences.append(f"{device}: " + _recommend_sentence(picks.get(device), metric, max_drop))
        if budget_ms is not None:
            pick = budget_picks.get(device)
            sentences.append(
                f"{device}: " + budget_sentence(variants, device, pick, metric, budget_ms)
            )
    for key, data in (
        ("md", markdown.encode()),
        ("csv", to_csv(variants).encode()),
        ("html", to_html(variants, png, sentences).encode()),
        ("png", png),
    ):
        atomic_write_bytes(paths[key], data)  # an earlier report is replaced whole or kept
    return {"paths": paths, "variants": variants, "recommended": picks, "budget": budget_picks}
