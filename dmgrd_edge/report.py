"""Per-category result tables in the paper's format: Markdown, CSV and JSON (torch-free)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, check_target

COLUMNS = (
    ("i_auroc", "I-AUC"),
    ("p_auroc", "P-AUC"),
    ("pro_30", "PRO@0.3"),
    ("pro_full", "PRO(full)"),
    ("ms_per_image", "ms/image"),
)
PERCENT = {"i_auroc", "p_auroc", "pro_30", "pro_full"}


def percent(value: float | None, digits: int = 2) -> str:
    """A share (0..1) as percentage points with ``digits`` decimals; "-" when not measured."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}" if key in PERCENT else f"{value:.2f}"


def with_average(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) < 2:
        return rows
    average: dict[str, Any] = {"category": "Average"}
    for key, _ in COLUMNS:
        values = [r[key] for r in rows if r.get(key) is not None]
        average[key] = sum(values) / len(values) if values else None
    return rows + [average]


def to_markdown(rows: list[dict[str, Any]], title: str | None = None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines.append("| Category | " + " | ".join(label for _, label in COLUMNS) + " |")
    lines.append("|---|" + "---:|" * len(COLUMNS))
    for row in with_average(rows):
        lines.append(
            f"| {row['category']} | " + " | ".join(_fmt(k, row.get(k)) for k, _ in COLUMNS) + " |"
        )
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category"] + [key for key, _ in COLUMNS])
    for row in with_average(rows):
        writer.writerow(
            [row["category"]] + ["" if row.get(k) is None else f"{row[k]:.6f}" for k, _ in COLUMNS]
        )
    return buffer.getvalue()


def report_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """The files ``write_reports`` writes, each checked to be a regular file or new (so a
    command can refuse before its work, and no set of reports is replaced in part)."""
    out = Path(out_dir)
    return {kind: check_target(out / f"{stem}.{kind}") for kind in ("md", "csv", "json")}


def write_reports(
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    stem: str,
    title: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    paths = report_paths(out_dir, stem)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    notes = (
        "\nI-AUC, P-AUC: ROC AUC of image scores / pixels. PRO@0.3: standard AUPRO up to FPR 0.3. "
        "PRO(full): PRO integrated over the whole FPR range, as the DM-GRD authors report it. "
        "ms/image: model forward time per image on the evaluation device, file reading excluded.\n"
    )
    atomic_write_bytes(paths["md"], (to_markdown(rows, title) + notes).encode())
    atomic_write_bytes(paths["csv"], to_csv(rows).encode())
    atomic_write_bytes(
        paths["json"],
        json.dumps(
            {"title": title, "rows": with_average(rows), **(extra or {})}, indent=2
        ).encode(),
    )
    return paths


def redact_paths(text: str) -> str:
    """Replace temporary working folders in benchmark records by ``<work>``, so committed
    results name no folder of the machine that produced them."""
    import re
    import tempfile

    root = re.escape(tempfile.gettempdir().rstrip("/"))
    return re.sub(root + r"/[A-Za-z0-9_.\-]+", "<work>", text)


def write_result(path: str | Path, record: Any) -> Path:
    """A benchmark's JSON record, its temporary folders redacted, written atomically (the
    folder made when missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = redact_paths(json.dumps(record, indent=2, default=str)) + "\n"
    atomic_write_bytes(path, text.encode())
    return path
