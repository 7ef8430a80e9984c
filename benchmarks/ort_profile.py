"""Where an ONNX model's time goes on ONNX Runtime: kernel time per operator type and per
model part (the module scope in the node names: teacher, normal_memory, msff, bottleneck,
student, head), from ONNX Runtime's own profiler.

    python benchmarks/ort_profile.py BUNDLE/model.onnx BUNDLE/model.int8-cpu.onnx [--nodes 30]

``--nodes N`` also lists the N nodes that took longest (name, operator, output type and
shape as ONNX Runtime ran them, e.g. uint8 NHWC for its integer convolutions).

Profiling adds a fixed cost per node, so the shares matter here, not the absolute times
(use export_latency.py for those).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dmgrd_edge.report import write_result
from dmgrd_edge.runtime.device_info import device_info


def part_of(node_name: str) -> str:
    """'/msff/blocks.0/conv/Conv' -> 'msff'; nodes ONNX Runtime adds (layout changes) ->
    'inserted'."""
    if node_name.startswith("/") and "/" in node_name[1:]:
        return node_name.split("/")[1]
    return "inserted by onnxruntime"


def profile(path: Path, batch: int, warmup: int, runs: int, threads: int, nodes: int = 0) -> dict:
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="dmgrd-prof-")) / "ort")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = session.get_inputs()[0].shape
    x = (
        np.random.default_rng(0)
        .normal(size=(batch, 3, int(shape[2]), int(shape[3])))
        .astype(np.float32)
    )
    for _ in range(warmup + runs):
        session.run(None, {name: x})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    starts = sorted(
        e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"
    )
    measured_from = starts[warmup] if len(starts) > warmup else 0  # the warm-up runs are left out
    by_op, by_part, by_node, node_info = Counter(), Counter(), Counter(), {}
    for event in events:
        if (
            event.get("cat") != "Node"
            or not event["name"].endswith("_kernel_time")
            or event["ts"] < measured_from
        ):
            continue
        node = event["name"][: -len("_kernel_time")]
        by_op[event["args"].get("op_name", "?")] += event["dur"]
        by_part[part_of(node)] += event["dur"]
        by_node[node] += event["dur"]
        node_info[node] = (
            event["args"].get("op_name", "?"),
            event["args"].get("output_type_shape"),
        )
    total = sum(by_op.values()) or 1
    share = lambda c: {k: round(100 * v / total, 1) for k, v in c.most_common()}  # noqa: E731
    top = [
        {
            "node": n,
            "operator": node_info[n][0],
            "output": node_info[n][1],
            "percent": round(100 * v / total, 2),
        }
        for n, v in by_node.most_common(nodes)
    ]
    return {
        "file": path.name,
        "batch": batch,
        "runs": runs,
        "kernel_ms_per_run": total / 1000 / runs,
        "percent_by_operator": share(by_op),
        "percent_by_part": share(by_part),
        "top_nodes": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--nodes", type=int, default=0, help="also list the N slowest nodes")
    parser.add_argument("--out", default="benchmarks/results/ort_profile.json")
    args = parser.parse_args()
    results = [
        profile(p, args.batch, args.warmup, args.runs, args.threads, args.nodes)
        for p in args.models
    ]
    for r in results:
        print(
            f"== {r['file']} (batch {r['batch']}, {r['kernel_ms_per_run']:.1f} ms of kernels per "
            "run, profiled)"
        )
        print(f"{'operator':28s} {'%':>6s}    {'model part':24s} {'%':>6s}")
        ops, parts = list(r["percent_by_operator"].items()), list(r["percent_by_part"].items())
        for i in range(min(args.top, max(len(ops), len(parts)))):
            op = f"{ops[i][0]:28s} {ops[i][1]:6.1f}" if i < len(ops) else " " * 35
            part = f"{parts[i][0]:24s} {parts[i][1]:6.1f}" if i < len(parts) else ""
            print(f"{op}    {part}")
        for node in r["top_nodes"]:
            name, output = node["node"][:70], str(node["output"])[:60]
            print(f"{node['percent']:5.1f} %  {node['operator']:22s} {name:70s} {output}")
    record = {
        "benchmark": "ort_profile",
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": results,
        "device": device_info(),
        "onnxruntime": ort.__version__,
    }
    write_result(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
