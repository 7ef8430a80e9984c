"""Runners: one job after another here, or as tasks of a local Ray instance (2 CPUs).

The Ray tests need Ray (in the `dev` and `cluster` extras); without it they are skipped and
say so. Finished jobs are not run again; the Ray tasks give the same results
as the local runner for the same seeds (both on 1 torch thread per job).
"""

import json
import sys
from pathlib import Path

import pytest

from dmgrd_edge.config import ModelConfig, TrainConfig
from dmgrd_edge.errors import ConfigError, DataError
from dmgrd_edge.options import TrainJob
from dmgrd_edge.train.runners import LocalRunner, RayRunner, make_runner


def _job(root, out, category="washer", steps=2, **kw):
    return TrainJob(
        dataset="mvtec",
        root=str(root),
        category=category,
        out_dir=str(out / category),
        model=ModelConfig(image_size=64, patch_bank_size=64),
        train=TrainConfig(
            steps=steps, batch_size=2, warmup_steps=1, val_every=2, checkpoint_every=2, threads=1
        ),
        pretrained=False,
        device="cpu",
        **kw,
    )


def test_local_runner_skips_finished_runs_and_starts_missing_ones(tmp_path, line_root):
    runs = tmp_path / "runs"
    first = LocalRunner().run([_job(line_root, runs)])
    summary = runs / "washer" / "train_summary.json"
    assert json.loads(summary.read_text()) == first[0]
    stamp = (runs / "washer" / "last.pt").stat().st_mtime_ns
    # the same command again, with one more category and --resume: washer is finished,
    # woven_fabric has nothing to resume and starts
    jobs = [_job(line_root, runs, resume=True), _job(line_root, runs, "woven_fabric", resume=True)]
    again = LocalRunner().run(jobs)
    assert again[0] == first[0] and again[1]["category"] == "woven_fabric"
    assert (runs / "washer" / "last.pt").stat().st_mtime_ns == stamp
    # other settings are another run: refused as today, nothing overwritten
    with pytest.raises(DataError, match="not empty"):
        LocalRunner().run([_job(line_root, runs, steps=3)])
    assert (runs / "washer" / "last.pt").stat().st_mtime_ns == stamp
    # --overwrite runs it again
    LocalRunner().run([_job(line_root, runs, steps=3, overwrite=True)])
    assert json.loads(summary.read_text())["steps"] == 3


@pytest.mark.fault("software, weights or device missing")
def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'dmgrd-edge\[cluster\]'"):
        make_runner(ray="auto")
    with pytest.raises(ConfigError, match="--devices and --ray together"):
        make_runner(ray="auto", devices=2)


@pytest.mark.fault("software, weights or device missing")
def test_ray_without_a_cluster_names_the_fix(tmp_path, line_root, monkeypatch):
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed: pip install -e '.[cluster]' to run this test"
    )
    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="ray start --head"):
        RayRunner("auto").run([_job(line_root, tmp_path)])
    assert not (tmp_path / "washer").exists()


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed: pip install -e '.[cluster]' to run this test"
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_tasks_match_the_local_runner_and_resume(tmp_path, line_root, local_ray):
    categories = ["washer", "woven_fabric"]
    local = LocalRunner().run([_job(line_root, tmp_path / "local", c) for c in categories])
    shared = tmp_path / "shared"
    runner = RayRunner(num_cpus=1)
    remote = runner.run([_job(line_root, shared, c) for c in categories])
    for a, b in zip(local, remote):
        assert a["category"] == b["category"] and a["job_digest"] == b["job_digest"]
        assert a["final_validation"] == b["final_validation"]  # same seeds, same metrics
        assert (shared / b["category"] / "last.pt").is_file()
    stamps = [(shared / c / "last.pt").stat().st_mtime_ns for c in categories]
    # the same sweep again: nothing is sent to Ray, the results come from the summary files
    assert runner.run([_job(line_root, shared, c) for c in categories]) == remote
    assert [(shared / c / "last.pt").stat().st_mtime_ns for c in categories] == stamps
    # a task's error comes back as it was raised in the task
    (tmp_path / "taken" / "washer").mkdir(parents=True)
    (tmp_path / "taken" / "washer" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        runner.run([_job(line_root, tmp_path / "taken")])


@pytest.mark.fault("option or combination that is not allowed")
def test_ray_runner_refuses_tasks_no_node_can_hold(local_ray, tmp_path, line_root):
    with pytest.raises(ConfigError, match="no task could ever start"):
        RayRunner(num_cpus=1, num_gpus=1).run([_job(line_root, tmp_path)])
    assert not (tmp_path / "washer").exists()


@pytest.mark.slow
def test_a_sweep_on_ray_matches_the_local_sweep_and_benches_here(tmp_path, line_root, local_ray):
    """Two training runs (the default and the baseline) as Ray tasks: the same metrics as the
    local sweep with the same seeds, every result written, and a second start sends nothing."""
    from dmgrd_edge.workflow.sweep import SweepConfig, run_sweep

    def config(out):
        return SweepConfig(
            data=str(line_root),
            category="washer",
            out=str(out),
            models=("default", "knn"),
            precisions=("fp32",),
            image_size=64,
            steps=2,
            batch_size=4,
            calib_count=4,
            bench_batches=(1,),
            bench_runs=2,
            threads=1,
            device="cpu",
        )

    local = run_sweep(config(tmp_path / "local"))
    runner = RayRunner(num_cpus=1)
    remote = run_sweep(config(tmp_path / "ray"), runner=runner)
    assert remote["variants"] == local["variants"] and len(remote["variants"]) == 2
    for name in remote["variants"]:
        a = json.loads(Path(local["results"][name]).read_text())["sweep"]
        b = json.loads(Path(remote["results"][name]).read_text())["sweep"]
        timed = ("ms_per_image",)
        same = [{k: v for k, v in r["checkpoint_eval"].items() if k not in timed} for r in (a, b)]
        assert same[0] == same[1]  # same seeds, same metrics
        assert "export" in b["seconds"] and "bench" in b["seconds"]
    stamps = {n: Path(p).stat().st_mtime_ns for n, p in remote["results"].items()}
    again = run_sweep(config(tmp_path / "ray"), runner=runner)
    assert {n: Path(p).stat().st_mtime_ns for n, p in again["results"].items()} == stamps
