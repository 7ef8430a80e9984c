"""Seed spread of the detection-quality rows: the same steps trained with several seeds.

    python benchmarks/seed_spread.py benchmarks/results/detection_quality_300_std_student.json \
        W/dq300_seed7.json W/dq300_seed2024.json \
        --out benchmarks/results/detection_quality_300_seeds.json

Each input is a ``detection_quality.py`` result at one seed (a file without a seed field is
the trainer's default seed). For every row the script prints the photograph means of
I-AUC / P-AUC / PRO@0.3 per seed and their mean and sample standard deviation over the
seeds, then the default row's margin over RD and over the kNN baseline, seed by seed (a
margin is paired: both rows come from the same trained student), so a reader can see
whether a margin is larger than the spread from the seed alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detection_quality import DEFAULT_ROW, means  # noqa: E402

METRICS = ("i_auroc", "p_auroc", "pro_30")
REFERENCES = ("RD (no memory)", "kNN baseline (training-free)")


def seed_of(payload: dict) -> int:
    from dmgrd_edge.config import TrainConfig

    seeds = {r.get("seed", TrainConfig().seed) for r in payload["results"]}
    if len(seeds) != 1:
        raise SystemExit(f"one seed per file expected, found {sorted(seeds)}")
    return seeds.pop()


def load(paths: list[Path]) -> dict[int, dict]:
    """Photograph means per variant, keyed by seed; all files must cover the same steps and
    categories, or the means would not be comparable."""
    by_seed: dict[int, dict] = {}
    shape = None
    for path in paths:
        payload = json.loads(path.read_text())
        rows = [r for r in payload["results"] if r["set"] == "photographs"]
        this = (
            sorted({r["steps"] for r in rows}),
            sorted({r["category"] for r in rows}),
        )
        if shape is None:
            shape = this
        elif this != shape:
            raise SystemExit(f"{path.name}: steps/categories {this}, the first file has {shape}")
        seed = seed_of(payload)
        if seed in by_seed:
            raise SystemExit(f"{path.name}: seed {seed} is given twice")
        by_seed[seed] = means(rows).get("photographs", {})
    return by_seed


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarise(by_seed: dict[int, dict]) -> dict:
    seeds = sorted(by_seed)
    variants = [v for v in by_seed[seeds[0]] if all(v in by_seed[s] for s in seeds)]
    rows = {v: {m: spread([by_seed[s][v][m] for s in seeds]) for m in METRICS} for v in variants}
    margins = {}
    for ref in REFERENCES:
        if ref in variants and DEFAULT_ROW in variants:
            margins[ref] = {
                m: spread([by_seed[s][DEFAULT_ROW][m] - by_seed[s][ref][m] for s in seeds])
                for m in METRICS
            }
    return {"seeds": seeds, "rows": rows, "margins": margins}


def table(by_seed: dict[int, dict], summary: dict) -> str:
    seeds = summary["seeds"]

    def cell(row: dict) -> str:
        return " / ".join(f"{100 * row[m]:.1f}" for m in METRICS)

    def pm(row: dict) -> str:
        return " / ".join(f"{100 * row[m]['mean']:.1f} ± {100 * row[m]['sd']:.1f}" for m in METRICS)

    head = "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |"
    lines = [head, "|" + "---|" * (len(seeds) + 2)]
    for variant, row in summary["rows"].items():
        cells = [cell(by_seed[s][variant]) for s in seeds]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {pm(row)} |")
    for ref, row in summary["margins"].items():
        cells = [
            " / ".join(
                f"{100 * (by_seed[s][DEFAULT_ROW][m] - by_seed[s][ref][m]):+.1f}" for m in METRICS
            )
            for s in seeds
        ]
        lines.append(f"| default − {ref} | " + " | ".join(cells) + f" | {pm(row)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="+", help="detection_quality result JSONs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.results) < 2:
        parser.error("give at least two result files (two seeds) to measure a spread")
    by_seed = load(args.results)
    summary = summarise(by_seed)
    print("I-AUC / P-AUC / PRO@0.3, means over the photograph categories")
    print(table(by_seed, summary))
    payload = {
        "benchmark": "seed_spread",
        "default_variant": DEFAULT_ROW,
        "inputs": [p.name for p in args.results],
        "per_seed": {str(s): by_seed[s] for s in summary["seeds"]},
        **summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
