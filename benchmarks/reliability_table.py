"""Run the fault and bad-input tests (those marked ``@pytest.mark.fault(KIND)`` anywhere in
tests/) and write docs/RELIABILITY.md: per kind, the test cases tried, how many passed, and
the tests that cover it; then the soak figures from benchmarks/results/runtime_soak.json.

    nice -n 15 python benchmarks/reliability_table.py

The counts come from this run of the test suite, not from a list kept by hand: a new
parametrized case or a new marked test shows up in the table on the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from dmgrd_edge.runtime.device_info import cpu_model

ROOT = Path(__file__).resolve().parent.parent
FILES = ["tests"]  # every test module; the plugin below keeps the marked tests only
CASES = ROOT / "benchmarks" / "results" / "reliability_cases.json"


MECHANISMS = [
    "- **Bundle commit** (`dmgrd_edge/bundle.py`, `commit_bundle`): the new bundle is "
    "assembled in a sibling `.NAME.staging-XXXX` folder and swapped with the old one in one "
    "step, Linux `renameat2(RENAME_EXCHANGE)` through ctypes (Linux 3.15+, glibc 2.28+); "
    "`--out` holds a whole bundle, old or new, at every instant. Where the OS or file system "
    "cannot swap, replacing an existing bundle is refused with an error (a new `--out` still "
    "works); there is no two-rename fallback. The test kills a real process with SIGKILL at "
    "each of the commit's steps (`DMGRD_EDGE_TEST_KILL_AT_COMMIT_STEP`, read only by that "
    "hook).",
    "- **Leftovers of killed exports**: each staging folder has a sibling lock file that "
    "its export holds (`flock`) until it ends; the next export to the same `--out` removes "
    "the folders whose lock nobody holds. Folders without such a lock file (made by hand, "
    "or `.NAME.old-*` folders of versions before this one) are not provably ours and are "
    "left alone. No lock and no clean-up on systems without `fcntl` (Windows).",
    "- **Links in a bundle**: a model file or `manifest.json` that is a symbolic link, lies "
    "under one, or resolves outside the bundle folder is refused at load and on every read, "
    "even when its hash matches.",
    "- **Decode limit**: images and video frames above `DMGRD_EDGE_MAX_PIXELS` pixels "
    "(default 8192 x 8192 = 67,108,864) are refused before decoding, from the PNG header or "
    "Pillow's lazy open for other formats (formats neither reads are checked right after "
    "decoding); video files and streams from the size the container or stream reports at "
    "open. Applies to training, calibration, eval, bench and the runtime's file sources.",
    "- **Typed records** (`dmgrd_edge/schema.py`): checkpoint metadata and bench results "
    "are read through typed schemas with ranges (the manifest through `bundle.py` with the "
    "same range checks); a damaged or edited field ends in a `CheckpointError` or "
    "`DataError` naming it.",
    "- **Results waiting for the main thread** (`runtime/pipeline.py`, `_InFlight`; "
    "`runtime/multicam.py` for `run --config`): an inference thread takes no new frames "
    "while `2 x workers` batches are taken and not yet handed to the thread that "
    "post-processes them and writes the sinks. Without the bound the inference threads ran "
    "ahead of a descheduled main thread by up to 116 batches (frame, tensor and map each) in "
    "a 20,000-frame soak, and the heaps of the threads that allocated them stayed resident "
    "after the backlog was handled.",
]


class Collect:
    """A pytest plugin that keeps the marked tests and records each case's outcome."""

    def __init__(self):
        self.kind: dict[str, str] = {}
        self.test: dict[str, str] = {}
        self.examples: dict[str, int] = {}
        self.outcome: dict[str, str] = {}

    def pytest_collection_modifyitems(self, config, items):
        kept = []
        for item in items:
            mark = item.get_closest_marker("fault")
            if mark is None:
                continue
            kept.append(item)
            self.kind[item.nodeid] = mark.args[0]
            self.test[item.nodeid] = f"{item.path.name}::{item.originalname}"
            settings = getattr(item.obj, "_hypothesis_internal_use_settings", None)
            if settings is not None:
                self.examples[item.nodeid] = settings.max_examples
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept

    def pytest_runtest_logreport(self, report):
        before = self.outcome.get(report.nodeid)
        if report.failed:
            self.outcome[report.nodeid] = "failed"
        elif report.skipped and before != "failed":
            self.outcome[report.nodeid] = "skipped"
        elif report.when == "call" and before is None:
            self.outcome[report.nodeid] = "passed"


def cases(c: Collect) -> list[dict]:
    return [
        {
            "id": nodeid,
            "kind": kind,
            "test": c.test[nodeid],
            "examples": c.examples.get(nodeid),
            "outcome": c.outcome.get(nodeid, "not run"),
        }
        for nodeid, kind in c.kind.items()
    ]


def table(results: list[dict]) -> list[str]:
    rows: dict[str, dict] = defaultdict(
        lambda: {"tried": 0, "passed": 0, "skipped": 0, "tests": {}}
    )
    for case in results:
        row = rows[case["kind"]]
        row["tried"] += 1
        row["passed"] += case["outcome"] == "passed"
        row["skipped"] += case["outcome"] == "skipped"
        row["tests"].setdefault(case["test"], case["examples"])
    lines = [
        "| Kind | Cases tried | Passed | Skipped | Covered by |",
        "|---|---:|---:|---:|---|",
    ]
    for kind, row in rows.items():
        tests = "<br>".join(
            f"`{t}`" + (f" (up to {n} generated inputs)" if n else "")
            for t, n in row["tests"].items()
        )
        lines.append(f"| {kind} | {row['tried']} | {row['passed']} | {row['skipped']} | {tests} |")
    tried, passed, skipped = (
        sum(r[k] for r in rows.values()) for k in ("tried", "passed", "skipped")
    )
    lines.append(f"| **all** | **{tried}** | **{passed}** | **{skipped}** | |")
    return lines


def soak_section(path: Path) -> list[str]:
    if not path.is_file():
        return ["No soak result yet: run `nice -n 15 python benchmarks/runtime_soak.py`."]
    r = json.loads(path.read_text())
    return [
        f"`{r['command']}` ({r['machine']}, {r['image_size']} px frames of a looped "
        "generated line video, fp32 ONNX Runtime, JSONL and video sinks), from "
        "`benchmarks/results/runtime_soak.json`:",
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| frames decided / asked | {r['frames_decided']} / {r['frames_asked']} |",
        f"| frames dropped / corrupt | {r['frames_dropped']} / {r['frames_corrupt']} |",
        f"| JSONL lines (== frames decided) | {r['jsonl_lines']} "
        f"({r['jsonl_lines_equal_frames_decided']}) |",
        f"| video frames read back (complete) | {r['video_frames']} ({r['video_complete']}) |",
        f"| wall time, rate | {r['wall_seconds']} s, {r['fps']} fps |",
        *conditions(r),
        f"| resident memory after {r['warmup_frames']} warm-up frames | "
        f"{r['rss_mib_at_warmup']} MiB |",
        f"| growth after warm-up: at the end / at most | {r['rss_growth_mib']} / "
        f"{r['rss_growth_max_mib']} MiB (goal < {r['goal_growth_mib']} MiB) |",
        f"| growth at the last sample while streaming (from `rss_trace`) | "
        f"{streaming_growth(r)} MiB |",
        f"| passed (growth at most < {r['goal_growth_mib']} MiB, nothing dropped or lost) | "
        f"{r['passed']} |",
        "",
        "Resident memory is sampled once a second from /proc. 'At most' is the largest sample "
        "after the warm-up, shutdown included; 'at the end' is the last sample, which may fall "
        "in the shutdown; the whole trace is in the JSON (`rss_trace`). The goal is judged on "
        "'at most'. The bundle is the tiny one the script trains and exports itself when no "
        "`--bundle` is given (a short run with `--workdir W` leaves it in `W/bundle`).",
        "",
        *earlier_soaks(path.parent),
    ]


def conditions(r: dict) -> list[str]:
    """What else ran on the machine during the soak, when the result says (older ones do not)."""
    rows = []
    if r.get("conditions"):
        rows.append(f"| conditions | {r['conditions']} |")
    load = r.get("load_average_1min") or {}
    if load.get("mean") is not None:
        rows.append(f"| 1-minute load average (mean / max) | {load['mean']} / {load['max']} |")
    return rows


def streaming_growth(r: dict) -> float:
    """Resident memory of the last sample before the run reached its last frame (the
    samples after it are the shutdown), less the one at the end of the warm-up."""
    streaming = [t for t in r["rss_trace"] if t["frames"] < r["frames_asked"]]
    return round(streaming[-1]["rss_mib"] - r["rss_mib_at_warmup"], 2)


EARLIER = {
    "runtime_soak_unbounded_results.json": "no bound on the results waiting for the main thread "
    "(20,000 frames of the same stream, counted in the process, had up to 116 batches waiting) "
    "and a bundle built by an earlier version",
    "runtime_soak_list_index.json": "the recording's AVI index as a list of tuples in memory",
    "runtime_soak_array_index.json": "the index as a flat array in memory (8 bytes a frame)",
}


def earlier_soaks(folder: Path) -> list[str]:
    """The same soak before the fixes it led to, kept as they were measured."""
    lines = []
    for name, what in EARLIER.items():
        if (folder / name).is_file():
            r = json.loads((folder / name).read_text())
            lines.append(
                f"- `benchmarks/results/{name}`, with {what}: {r['frames_decided']} frames, "
                f"{r['frames_dropped']} dropped, growth after warm-up {r['rss_growth_mib']} MiB "
                f"at the end, {r['rss_growth_max_mib']} MiB at most."
            )
    if lines:
        lines.insert(0, "Earlier runs of the same command, before the fixes they led to:")
        lines.insert(1, "")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the page from the last run's cases (after a new soak) without the tests",
    )
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads(CASES.read_text())
        results, code = saved["cases"], saved["pytest_exit_status"]
    else:
        collect = Collect()
        code = int(
            pytest.main(
                ["-q", "-p", "no:cacheprovider", *[str(ROOT / f) for f in FILES]],
                plugins=[collect],
            )
        )
        results = cases(collect)
        CASES.write_text(
            json.dumps({"pytest_exit_status": code, "cases": results}, indent=1) + "\n"
        )
    text = [
        "# Reliability: fault and bad-input tests",
        "",
        "Generated by `nice -n 15 python benchmarks/reliability_table.py` on "
        f"{os.cpu_count()} cores of an {cpu_model()} VM; the counts are this run's test "
        "cases (each parametrized case counts once; a skipped case is not a passed one), "
        "grouped by the `@pytest.mark.fault(KIND)` marker of the test, from every test "
        "module. A property test's case draws up to the number of inputs shown (hypothesis, "
        "derandomized); any input must end in a value the toolkit can use or a clean "
        "`DmgrdError`.",
        "",
        *table(results),
        "",
        f"pytest exit status of this run: {code}; every case with its outcome: "
        "`benchmarks/results/reliability_cases.json`.",
        "",
        "## Mechanisms",
        "",
        *MECHANISMS,
        "",
        "## Soak",
        "",
        *soak_section(ROOT / "benchmarks" / "results" / "runtime_soak.json"),
        "",
    ]
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")
    sys.exit(code)


if __name__ == "__main__":
    main()
