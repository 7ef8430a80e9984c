"""`dmgrd-edge bench`: backend latency, throughput, memory, start-up time and accuracy, with
the device recorded. Torch-free, so it runs on the Jetson as-is."""

from __future__ import annotations

import json
import resource
import threading
import time
from pathlib import Path

import numpy as np

from dmgrd_edge.atomic import atomic_write_bytes
from dmgrd_edge.bundle import load_bundle
from dmgrd_edge.data.datasets import index_category
from dmgrd_edge.data.preprocess import normalize, read_frames, read_masks
from dmgrd_edge.errors import ConfigError, DataError
from dmgrd_edge.metrics import evaluate_all
from dmgrd_edge.options import BenchSettings

from .device_info import device_info
from .select import create_backend


def _peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss
    does not, and counts the memory of whatever process launched this one (a benchmark
    script holding torch would make the bench report torch's memory)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_memory_mib() -> float | None:
    try:
        import pycuda.driver as cuda

        free, total = cuda.mem_get_info()
        return (total - free) / 2**20
    except Exception:  # noqa: BLE001 - no CUDA context: not measured
        return None


def latency(
    backend, batch: int, size: tuple[int, int], warmup: int, runs: int, seed: int = 0
) -> dict:
    x = np.random.default_rng(seed).normal(size=(batch, 3, *size)).astype(np.float32)
    for _ in range(warmup):
        backend.infer(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.infer(x)
        times.append(1000 * (time.perf_counter() - t0))
    t = np.asarray(times)
    return {
        "batch": batch,
        "runs": runs,
        "warmup": warmup,
        "ms_p50": float(np.percentile(t, 50)),
        "ms_p90": float(np.percentile(t, 90)),
        "ms_p99": float(np.percentile(t, 99)),
        "ms_mean": float(t.mean()),
        "images_per_s": float(batch * 1000 / np.percentile(t, 50)),
    }


def throughput(backend, x: np.ndarray, workers: int, runs: int) -> float:
    """Images per second (wall clock) with ``workers`` threads calling ``infer`` back to back
    on the batch ``x`` (``runs`` calls each, after one warm-up call each)."""
    start = threading.Barrier(workers)
    spans: list[tuple[float, float]] = []

    errors: list[BaseException] = []

    def loop() -> None:
        try:
            backend.infer(x)
            start.wait()
            t0 = time.perf_counter()
            for _ in range(runs):
                backend.infer(x)
            spans.append((t0, time.perf_counter()))
        except BaseException as exc:  # reported by the caller's thread, not lost in this one
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if failed or errors:
        raise (failed or errors)[0]
    # the clock is read by the workers themselves: a main thread taken off the CPU after the
    # barrier (a busy machine) would start its clock late, after calls that already ran
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    return workers * runs * len(x) / (last - first)


def test_batch(samples, cfg) -> np.ndarray:
    """The backend's input for some test samples: their files through the shared preprocess."""
    return normalize(read_frames([s.path for s in samples], cfg), cfg)


def accuracy(backend, bundle, root: Path, dataset: str, category: str, batch: int) -> dict:
    cfg = bundle.preprocess
    index = index_category(dataset, root, category)
    if not index.test:
        raise DataError(
            f"{category} has no test images in {root} (dataset layout {dataset})",
            "give --data a dataset with a test split, or leave --data out",
        )
    maps, scores = [], []
    for i in range(0, len(index.test), batch):
        chunk = index.test[i : i + batch]
        amap, score = backend.infer(test_batch(chunk, cfg))
        maps.append(amap[:, 0])
        scores.append(score)
    masks = read_masks(index.test, cfg)
    labels = np.array([s.label for s in index.test])
    result = evaluate_all(labels, np.concatenate(scores), masks, np.concatenate(maps))
    result.update(dataset=dataset, category=category, n_test=int(len(labels)))
    return result


def run_bench(
    bundle_path: Path,
    backend_name: str = "auto",
    precision: str = "auto",
    batches=(1, 4, 8),
    warmup: int = BenchSettings.warmup,
    runs: int = BenchSettings.runs,
    data: Path | None = None,
    dataset: str = BenchSettings.dataset,
    category: str | None = None,
    threads: int = 0,
    log=print,
    workers: int | None = 1,
) -> dict:
    """Latency is measured one call at a time; ``images_per_s`` is the throughput with the
    backend's calls in flight (``workers``, as `run` would use them; None: the backend's
    choice), so it is what `run` can reach without capture."""
    started = time.perf_counter()
    bundle = load_bundle(bundle_path)
    chosen = create_backend(
        bundle,
        backend_name,
        precision,
        max_batch=max(batches),
        threads=threads,
        log=log,
        workers=workers,
    )
    try:
        startup_s = time.perf_counter() - started
        return _measure(
            chosen,
            bundle,
            bundle_path,
            batches,
            warmup,
            runs,
            data,
            dataset,
            category,
            startup_s,
            log,
        )
    finally:
        chosen.close()


def _measure(
    chosen,
    bundle,
    bundle_path: Path,
    batches,
    warmup: int,
    runs: int,
    data: Path | None,
    dataset: str,
    category: str | None,
    startup_s: float,
    log,
) -> dict:
    backend, workers = chosen.backend, chosen.workers
    low, high = backend.batch_range  # e.g. a TensorRT engine's optimization profile
    outside = [b for b in batches if b < low or (high is not None and b > high)]
    if outside:
        raise ConfigError(
            f"{chosen.file} takes batches of {low} to {high}, not {outside}",
            f"give --batch sizes from {low} to {high}, or rebuild "
            "the engine with a profile that covers them (build-engine --batch "
            "MIN:OPT:MAX)",
        )
    size = (bundle.preprocess.height, bundle.preprocess.width)
    rows = []
    for b in batches:
        row = latency(backend, b, size, warmup, runs)
        if workers > 1:
            row["images_per_s_one_call"] = row["images_per_s"]
            x = np.random.default_rng(0).normal(size=(b, 3, *size)).astype(np.float32)
            row["images_per_s"] = throughput(backend, x, workers, max(1, runs // workers))
        row["workers"] = workers
        rows.append(row)
        log(
            f"batch {b}: p50 {row['ms_p50']:.2f} ms, p90 {row['ms_p90']:.2f}, p99 "
            f"{row['ms_p99']:.2f}, "
            f"{row['images_per_s']:.1f} img/s ({workers} in flight)"
        )
    result = {
        "bundle": str(bundle_path),
        "backend": chosen.describe(),
        "startup_s": startup_s,
        "latency": rows,
        "peak_host_rss_mib": _peak_rss_mib(),
        "device_memory_used_mib": _device_memory_mib(),
        "device": device_info(),
        "model": bundle.manifest["model"],
        "pruning": bundle.manifest.get("source", {}).get("pruning"),
    }
    if data is not None:
        category = category or bundle.manifest["source"].get("category")
        result["accuracy"] = accuracy(backend, bundle, Path(data), dataset, category, max(batches))
    return result


def print_table(result: dict) -> str:
    lines = [
        f"{'batch':>5s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'img/s':>8s} "
        f"{'in flight':>9s}"
    ]
    for r in result["latency"]:
        lines.append(
            f"{r['batch']:5d} {r['ms_p50']:8.2f} {r['ms_p90']:8.2f} {r['ms_p99']:8.2f} "
            f"{r['images_per_s']:8.1f} {r.get('workers', 1):9d}"
        )
    lines.append(
        f"start-up {result['startup_s']:.2f} s, peak host RSS {result['peak_host_rss_mib']:.0f} MiB"
    )
    if "accuracy" in result:
        a = result["accuracy"]
        lines.append(
            f"accuracy: I-AUC {100 * a.get('i_auroc', float('nan')):.2f} P-AUC "
            f"{100 * a.get('p_auroc', float('nan')):.2f} PRO@0.3 "
            f"{100 * a.get('pro_30', float('nan')):.2f}"
        )
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> None:
    atomic_write_bytes(path, json.dumps(result, indent=2).encode())
