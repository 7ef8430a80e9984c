"""The patch memory, the nearest-neighbour baseline and the combined score: exact reads,
config rules, training, rescoring, export parity and the bundle through the runtime."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from dmgrd_edge.config import ModelConfig, TrainConfig, model_config_from_options
from dmgrd_edge.errors import ConfigError
from dmgrd_edge.model.patch_memory import PatchMemory, greedy_coreset, local_average


def _train(line_root, out, steps=4, **options):
    from dmgrd_edge.options import TrainJob
    from dmgrd_edge.train.trainer import train_category

    cfg = model_config_from_options(image_size=64, memory_size=4, patch_bank_size=64, **options)
    job = TrainJob(
        dataset="mvtec",
        root=str(line_root),
        category="washer",
        out_dir=str(out),
        model=cfg,
        train=TrainConfig(
            steps=steps, batch_size=4, warmup_steps=1, val_every=2, checkpoint_every=2
        ),
    )
    train_category(job)
    return out / "last.pt"


@pytest.fixture(scope="module")
def knn_ckpt(tmp_path_factory, line_root):
    return _train(line_root, tmp_path_factory.mktemp("knn") / "washer", method="knn")


@pytest.fixture(scope="module")
def combined_ckpt(tmp_path_factory, line_root):
    return _train(
        line_root,
        tmp_path_factory.mktemp("patch") / "washer",
        memory_read="patch",
        score_source="combined",
    )


def test_patch_read_finds_the_exact_nearest_normal_patch():
    torch.manual_seed(0)
    memory = PatchMemory(32, (8, 16, 24))
    train = [torch.randn(6, c, s, s) for c, s in ((8, 16), (16, 8), (24, 4))]
    memory.fill(train, seed=0)
    query = [torch.randn(2, c, s, s) for c, s in ((8, 16), (16, 8), (24, 4))]
    for level, feat in enumerate(query):
        distance, local, nearest = memory.read(feat, level, want_nearest=True)
        rows = local.permute(0, 2, 3, 1).reshape(-1, feat.shape[1])
        brute = (rows[:, None] - memory.bank(level)[None]).pow(2).sum(-1).sqrt().min(1).values
        got = distance.permute(0, 2, 3, 1).reshape(-1) / memory.inv_distance0.new_tensor(
            float(getattr(memory, f"inv_distance{level}"))
        )
        assert torch.allclose(got, brute, atol=1e-5)
        assert torch.allclose((nearest - local).pow(2).sum(1).sqrt().flatten(), brute, atol=1e-5)
    # a bank row queried as itself is at distance zero, with no cancellation error
    distance, _ = memory._distance(memory.bank(1)[None], 1)
    assert float(distance.max()) == 0.0


def test_coreset_is_farthest_point_and_covers_better_than_random():
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(20, 6, generator=generator) * 10
    points = centres[torch.randint(20, (2000,), generator=generator)] + 0.1 * torch.randn(
        2000, 6, generator=generator
    )
    chosen = greedy_coreset(points, 20, seed=0)
    assert len(set(chosen.tolist())) == 20
    radius = torch.cdist(points, points[chosen]).min(1).values.max()
    random_radius = torch.cdist(points, points[:20]).min(1).values.max()
    assert radius < 1.0 < random_radius  # one pick per cluster; the first 20 points miss some
    assert torch.equal(greedy_coreset(points[:5], 20, seed=0), torch.arange(5))


def test_local_average_keeps_size_and_constant_maps():
    x = torch.full((1, 3, 7, 7), 2.5)
    assert torch.allclose(local_average(x), x)


def test_config_rules_and_legacy_checkpoints():
    legacy = {
        k: v
        for k, v in ModelConfig().to_dict().items()
        if k not in ("method", "memory_read", "score_source")
    }
    old = ModelConfig.from_dict(legacy)
    assert (old.method, old.memory_read, old.score_source) == ("dmgrd", "image", "student")
    assert not old.uses_patch_memory
    with pytest.raises(ConfigError, match="memory only"):
        ModelConfig(method="knn", score_source="student")
    with pytest.raises(ConfigError, match="turns off"):
        model_config_from_options(use_memory=False, memory_read="patch")
    default = ModelConfig()  # the defaults the detection-quality benchmark chose
    assert (default.use_memory, default.score_source) == (False, "combined")
    assert not default.guided_by_patches and default.uses_patch_memory
    assert model_config_from_options(memory_read="patch").guided_by_patches
    with pytest.raises(ConfigError, match="whole number"):
        ModelConfig(patch_bank_size=None)
    plain = model_config_from_options(use_memory=False)
    assert plain.score_source == "student" and not plain.uses_patch_memory
    unguided = model_config_from_options(use_memory=True, memory_read="none")
    assert not unguided.use_memory and unguided.score_source == default.score_source
    both = model_config_from_options(use_memory=False, memory_read="none")
    assert both.score_source == "student"
    with pytest.raises(ConfigError, match="unknown score source"):
        ModelConfig(score_source="both")
    with pytest.raises(ConfigError, match="subset"):
        ModelConfig(memory_score_levels=(3,))
    knn = model_config_from_options(method="knn", memory_read=None)
    assert knn.score_source == "memory" and not knn.use_memory
    again = ModelConfig.from_dict(json.loads(json.dumps(knn.to_dict())))
    assert again == knn


def test_knn_baseline_has_no_student_and_no_training(knn_ckpt):
    from dmgrd_edge.train.checkpoint import load_model, read_checkpoint

    model, payload = load_model(knn_ckpt)
    assert not model.trainable_parameters() and payload["step"] == 0
    assert not hasattr(model, "student") and hasattr(model, "patch_memory")
    assert float(model.patch_memory.bank2.abs().sum()) > 0
    assert read_checkpoint(knn_ckpt)["metadata"]["score_stats"]["threshold"] > 0


@pytest.mark.fault("option or combination that is not allowed")
def test_knn_baseline_cannot_be_pruned(knn_ckpt, tmp_path):
    from dmgrd_edge.options import PruneJob
    from dmgrd_edge.train.prune import prune_checkpoint

    with pytest.raises(ConfigError, match="no channels to prune"):
        prune_checkpoint(PruneJob(checkpoint=str(knn_ckpt), out_dir=str(tmp_path / "p"), ratio=0.5))
    assert not (tmp_path / "p").exists()


def test_combined_score_weights_come_from_validation_normals(combined_ckpt):
    from dmgrd_edge.train.checkpoint import load_model

    model, payload = load_model(combined_ckpt)
    weights = model.head.map_weights
    means = payload["metadata"]["map_stats"]
    assert torch.allclose(
        weights, torch.tensor([0.5 / means["student"], 0.5 / means["memory"]]), rtol=1e-5
    )
    assert not hasattr(model, "normal_memory")  # the patch read replaces the image bank


def test_rescore_changes_only_the_map(combined_ckpt, tmp_path):
    from dmgrd_edge.train.checkpoint import load_model
    from dmgrd_edge.train.rescore import rescore_checkpoint

    student_path = tmp_path / "student.pt"
    rescore_checkpoint(combined_ckpt, student_path, "student", device="cpu")
    combined, _ = load_model(combined_ckpt)
    student, payload = load_model(student_path)
    assert student.config.score_source == "student" and not hasattr(student.head, "map_weights")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        teacher = combined.teacher(x)
        expected = combined.head(teacher, combined.decode(combined.guide(teacher)))[1]
        assert torch.allclose(student(x).score, expected, atol=1e-5)
    assert payload["metadata"]["rescored_from"] == str(combined_ckpt)
    with pytest.raises(ConfigError, match="already exists"):
        rescore_checkpoint(combined_ckpt, combined_ckpt, "memory", device="cpu")
    kept = student_path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        rescore_checkpoint(combined_ckpt, student_path, "memory", device="cpu")
    assert student_path.read_bytes() == kept  # an existing file is never replaced


def test_rescore_adds_a_memory_to_a_model_trained_without_one(trained_ckpt, tmp_path):
    from dmgrd_edge.train.checkpoint import load_model
    from dmgrd_edge.train.rescore import rescore_checkpoint

    out = tmp_path / "combined.pt"
    summary = rescore_checkpoint(trained_ckpt, out, "combined", device="cpu")
    model, _ = load_model(out)
    assert model.config.memory_read == "image" and float(model.patch_memory.bank0.abs().sum()) > 0
    assert summary["map_stats"]["memory"] > 0


def _export(ckpt, out, **kwargs):
    from dmgrd_edge.export.pipeline import export_bundle

    from dmgrd_edge.options import ExportOptions

    return export_bundle(
        ExportOptions(checkpoint=ckpt, out=out, calib_count=8, **kwargs), log=lambda _: None
    )


def _torch_vs_onnx(ckpt, onnx_path):
    import onnxruntime as ort
    from dmgrd_edge.train.checkpoint import load_model

    model, _ = load_model(ckpt)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    amap, score = session.run(None, {"image": x})
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return np.abs(amap - out.anomaly_map.numpy()).max(), np.abs(score - out.score.numpy()).max()


def test_knn_bundle_matches_pytorch_and_runs_at_the_line(knn_ckpt, line_root, tmp_path):
    with pytest.raises(ConfigError, match="int8-teacher"):
        _export(knn_ckpt, tmp_path / "refused", int8=True)
    assert not (tmp_path / "refused").exists()
    bundle = tmp_path / "knn"
    manifest = _export(knn_ckpt, bundle, int8=True, int8_teacher=True)
    assert manifest["model"]["method"] == "knn" and manifest["memory_bank_bytes"] > 0
    map_err, score_err = _torch_vs_onnx(knn_ckpt, bundle / "model.onnx")
    assert map_err < 1e-3 and score_err < 1e-3
    events = tmp_path / "events.jsonl"
    source = str(line_root / "washer" / "test" / "*" / "*.png")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmgrd_edge.cli",
            "run",
            str(bundle),
            "--source",
            source,
            "--sink",
            str(events),
            "--headless",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    n_test = len(list((line_root / "washer" / "test").glob("*/*.png")))
    assert len(lines) == n_test
    assert {line["decision"] for line in lines} <= {"OK", "NG"} and any(
        line["decision"] == "NG" for line in lines
    )


def test_combined_bundle_matches_pytorch_in_fp32_and_fp16(combined_ckpt, tmp_path):
    bundle = tmp_path / "combined"
    manifest = _export(combined_ckpt, bundle, int8=True, fp16=True)
    map_err, score_err = _torch_vs_onnx(combined_ckpt, bundle / "model.onnx")
    assert map_err < 1e-3 and score_err < 1e-3
    import onnx

    names = {i.name for i in onnx.load(str(bundle / "model.onnx")).graph.initializer}
    assert any("patch_memory.bank0" in n for n in names) and not any(
        "normal_memory" in n for n in names
    )
    int8 = onnx.load(str(bundle / "model.int8.onnx"))
    quantized_inputs = {
        i for n in int8.graph.node if n.op_type == "DequantizeLinear" for i in n.output
    }
    assert not [
        n.name
        for n in int8.graph.node
        if n.name.startswith("/patch_memory/") and set(n.input) & quantized_inputs
    ]  # the memory read stays fp32
    assert set(manifest["files"]) >= {"model.fp16.onnx", "model.int8-cpu.onnx"}


def test_fp16_module_runs_the_models_own_steps(combined_ckpt):
    from dmgrd_edge.export.onnx_export import HalfPrecisionDMGRD
    from dmgrd_edge.train.checkpoint import load_model

    model, _ = load_model(combined_ckpt)
    half = HalfPrecisionDMGRD(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full, low = model(x), half(x)
    assert low.anomaly_map.dtype == torch.float32
    assert torch.allclose(low.score, full.score, rtol=0.05)
    changed = dataclasses.replace(model.config, score_source="memory")
    assert changed.uses_patch_memory


def test_map_scale_sets_the_combined_weights_from_that_statistic(combined_ckpt, tmp_path):
    from dmgrd_edge.train.checkpoint import load_model
    from dmgrd_edge.train.rescore import rescore_checkpoint

    out, mean = tmp_path / "std.pt", tmp_path / "mean.pt"
    summary = rescore_checkpoint(combined_ckpt, out, "combined", map_scale="std", device="cpu")
    rescore_checkpoint(combined_ckpt, mean, "combined", map_scale="mean", device="cpu")
    model, payload = load_model(out)
    mean_model, mean_payload = load_model(mean)
    assert model.config.map_scale == "std" and mean_model.config.map_scale == "mean"
    stds = summary["map_stats"]
    expected = torch.tensor([0.5 / stds["student"], 0.5 / stds["memory"]])
    assert torch.allclose(model.head.map_weights, expected, rtol=1e-5)
    assert not torch.allclose(model.head.map_weights, mean_model.head.map_weights)
    with pytest.raises(ConfigError, match="unknown map scale"):
        ModelConfig(map_scale="max")


def test_rescore_refills_the_patch_memory_at_another_size(combined_ckpt, tmp_path):
    from dmgrd_edge.train.checkpoint import load_model
    from dmgrd_edge.train.rescore import rescore_checkpoint

    out = tmp_path / "bank32.pt"
    rescore_checkpoint(combined_ckpt, out, "combined", patch_bank_size=32, device="cpu")
    before, _ = load_model(combined_ckpt)
    after, _ = load_model(out)
    assert before.patch_memory.bank0.shape[0] == 64 and after.patch_memory.bank0.shape[0] == 32
    assert after.config.patch_bank_size == 32
    # the student is the trained one: only the memory and the map weights were rebuilt
    for name, value in before.state_dict().items():
        if name.startswith(("student.", "bottleneck.", "msff.")):
            assert torch.equal(value, after.state_dict()[name]), name
    assert float(after.patch_memory.bank0.abs().sum()) > 0


@pytest.mark.fault("configuration file or record that is not valid")
def test_loss_weights_switch_terms_off_and_are_range_checked():
    from types import SimpleNamespace

    from dmgrd_edge.train.losses import AUTHORS_WEIGHTS, dmgrd_loss

    torch.manual_seed(0)
    levels = [torch.randn(4, 8, 4, 4, requires_grad=True) for _ in range(3)]
    features = SimpleNamespace(
        student=[torch.randn(4, 8, 4, 4) for _ in range(3)],
        fused_normal=levels,
        fused_abnormal=[torch.randn(4, 8, 4, 4) for _ in range(3)],
    )
    teacher = [torch.randn(4, 8, 4, 4) for _ in range(3)]
    anomalous = torch.tensor([False, False, True, True])
    full = dmgrd_loss(features, teacher, anomalous)
    assert full.ot > 0 and full.con >= 0 and full.triplet >= 0
    expected = full.kd + 0.2 * full.ot + 0.02 * full.con + 0.1 * full.triplet
    assert torch.allclose(full.total, expected)
    without_ot = dmgrd_loss(features, teacher, anomalous, {**AUTHORS_WEIGHTS, "ot": 0.0})
    assert float(without_ot.ot) == 0.0
    assert torch.allclose(without_ot.total, expected - 0.2 * full.ot)
    assert TrainConfig(triplet_weight=0.0).loss_weights == {
        "ot": 0.2,
        "con": 0.02,
        "triplet": 0.0,
    }
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="ot loss weight"):
            TrainConfig(ot_weight=bad)


def test_linear_fusion_replaces_msff_with_the_same_shapes():
    from dmgrd_edge.model import DMGRD
    from dmgrd_edge.model.msff import MSFF, LinearFusion

    common = dict(image_size=64, memory_size=4, patch_bank_size=32)
    models = {
        fusion: DMGRD(
            model_config_from_options(memory_read="patch", fusion=fusion, **common),
            pretrained=False,
        ).eval()
        for fusion in ("msff", "linear")
    }
    assert isinstance(models["msff"].msff, MSFF)
    assert isinstance(models["linear"].msff, LinearFusion)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        shapes = {
            f: [t.shape for t in m.training_features(x).fused_normal] for f, m in models.items()
        }
    assert shapes["msff"] == shapes["linear"]
    with pytest.raises(ConfigError, match="fusion"):
        ModelConfig(fusion="attention")


@pytest.mark.fault("option or combination that is not allowed")
def test_memory_path_ablations_need_a_memory_guided_student(line_root, tmp_path):
    base = [sys.executable, "-m", "dmgrd_edge.cli", "train", "--data", str(line_root)]
    base += ["--category", "washer", "--out", str(tmp_path / "runs"), "--steps", "1"]
    for extra in (["--without-loss", "ot"], ["--fusion", "linear"]):
        result = subprocess.run(base + extra, capture_output=True, text=True)
        assert result.returncode != 0
        assert "--memory-read patch" in result.stderr + result.stdout
    result = subprocess.run(
        base + ["--memory-read", "patch", "--without-loss", "entropy"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "'con', 'ot', 'triplet'" in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.fault("command-line number out of range")
def test_rescore_refuses_a_bank_size_out_of_range_before_reading(tmp_path):
    out = tmp_path / "new.pt"
    result = subprocess.run(
        [sys.executable, "-m", "dmgrd_edge.cli", "rescore", str(tmp_path / "missing.pt")]
        + ["--out", str(out), "--patch-bank-size", "3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "--patch-bank-size" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_student_image_score_keeps_the_map_and_scores_the_students_share(combined_ckpt, tmp_path):
    from dmgrd_edge.train.checkpoint import load_model
    from dmgrd_edge.train.rescore import rescore_checkpoint

    out, same_map = tmp_path / "student-score.pt", tmp_path / "map-score.pt"
    rescore_checkpoint(combined_ckpt, out, "combined", image_score="student", device="cpu")
    rescore_checkpoint(combined_ckpt, same_map, "combined", image_score="map", device="cpu")
    combined, _ = load_model(same_map)
    model, _ = load_model(out)
    assert model.config.image_score == "student" and combined.config.image_score == "map"
    torch.manual_seed(3)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        got, same = model(x), combined(x)
        teacher = model.teacher(x)
        share = model.head.blur(
            model.head.distance_map(teacher, model.decode(model.guide(teacher)))
            * model.head.map_weights[0]
        )
    # the map is the combined one; the score is the top-k mean of the student's share alone
    assert torch.allclose(got.anomaly_map, same.anomaly_map, atol=1e-5)
    expected = (2 * share).flatten(1).topk(100, dim=1).values.mean(1)  # on the map's scale
    assert torch.allclose(got.score, expected, atol=1e-6)
    assert not torch.allclose(got.score, same.score, atol=1e-4)
    bundle = tmp_path / "bundle"
    _export(out, bundle)
    map_err, score_err = _torch_vs_onnx(out, bundle / "model.onnx")
    assert map_err < 1e-3 and score_err < 1e-3


def test_auto_image_score_keeps_the_rule_that_separates_validation_better(combined_ckpt, tmp_path):
    """`--image-score auto`: the rescored checkpoint keeps the rule whose validation figures
    are the better (its choice is in the weights and the metadata; the figures are each fixed
    rule's own validation, from one forward pass), scores exactly as the fixed rule it chose,
    and exports to one graph that computes that rule alone, with the same scores."""
    from dmgrd_edge.export.deploy import deployable
    from dmgrd_edge.train.checkpoint import load_model, read_checkpoint
    from dmgrd_edge.train.rescore import rescore_checkpoint

    auto = tmp_path / "auto.pt"
    rescore_checkpoint(combined_ckpt, auto, "combined", image_score="auto", device="cpu")
    choice = read_checkpoint(auto)["metadata"]["image_score_choice"]
    found = choice["validation"]
    best = max(found, key=lambda r: (found[r]["i_auroc"], found[r]["margin"]))
    assert choice["chosen"] == best and set(found) == {"map", "student"}
    model, _ = load_model(auto)
    assert model.config.image_score == "auto"
    assert float(model.head.student_score) == (1.0 if best == "student" else 0.0)
    torch.manual_seed(4)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    fixed = {}
    for rule in ("map", "student"):
        rescore_checkpoint(combined_ckpt, tmp_path / f"{rule}.pt", "combined", image_score=rule)
        fixed[rule] = load_model(tmp_path / f"{rule}.pt")[0]
        own = read_checkpoint(tmp_path / f"{rule}.pt")["metadata"]["rescored"]["validation"]
        assert found[rule]["i_auroc"] == round(own["i_auroc"], 4)
    other = "map" if best == "student" else "student"
    with torch.no_grad():
        got = model(x)
        want = {rule: m(x) for rule, m in fixed.items()}
        assert torch.allclose(got.score, want[best].score, atol=1e-6)
        assert torch.allclose(got.anomaly_map, want["map"].anomaly_map, atol=1e-5)
        for rule in (best, other):  # the deployment rewrite fixes the rule the flag names
            deployed, rewrites = deployable(model)
            assert rewrites["image_score_fixed"] == rule and not deployed.head.choose_score
            assert torch.allclose(deployed(x).score, want[rule].score, atol=1e-6)
            assert torch.allclose(model(x).score, want[rule].score, atol=1e-6)
            model.head.student_score.fill_(1.0 - float(model.head.student_score))
    bundle = tmp_path / "bundle"
    assert _export(auto, bundle)["source"]["image_score_chosen"] == best
    map_err, score_err = _torch_vs_onnx(auto, bundle / "model.onnx")
    assert map_err < 1e-3 and score_err < 1e-3
    graph = onnx.load(str(bundle / "model.onnx"))
    props = {p.key: p.value for p in graph.metadata_props}
    assert f"image_score_fixed={best}" in props["dmgrd_edge.rewrites"]
    ops = [n.op_type for n in graph.graph.node]
    assert "Where" not in ops and ops.count("TopK") == 1  # one rule's score, computed once


def test_student_image_score_applies_to_combined_maps_and_old_checkpoints_keep_the_map():
    assert ModelConfig().image_score == "student" and ModelConfig().map_scale == "std"
    # a map that is not combined is the only one there is: the student rule changes nothing
    student = {"image_score": "student"}
    assert not _head_reads_student(ModelConfig(method="knn", score_source="memory", **student))
    assert not _head_reads_student(ModelConfig(use_memory=False, score_source="student", **student))
    assert _head_reads_student(ModelConfig())  # the default: the student's share
    assert not _head_reads_student(ModelConfig(image_score="map"))
    assert not _head_reads_student(ModelConfig(image_score="auto"))
    with pytest.raises(ConfigError, match="unknown image score"):
        ModelConfig(image_score="max")
    assert ModelConfig.from_dict({"backbone": "efficientnet_lite0"}).image_score == "map"


def test_map_weights_are_measured_in_eval_mode_and_leave_training_state_alone(combined_ckpt):
    from dmgrd_edge.train.checkpoint import load_model

    model, _ = load_model(combined_ckpt)
    normal = torch.rand(4, 3, 64, 64) * 2 - 1
    expected = model.eval().calibrate_map_weights(normal)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    assert model.calibrate_map_weights(normal) == pytest.approx(expected, rel=1e-6)
    assert model.training and model.student.training and not model.teacher.training
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # BatchNorm stats unmoved


def test_a_bank_larger_than_the_training_patches_keeps_a_unit_distance_scale():
    torch.manual_seed(0)
    memory = PatchMemory(64, (8,))
    train = [torch.randn(2, 8, 4, 4)]  # 32 patches for 64 rows: every patch is a bank row
    memory.fill(train, seed=0)
    points = local_average(train[0]).permute(0, 2, 3, 1).reshape(-1, 8)
    pairwise = torch.cdist(points, points).fill_diagonal_(float("inf"))
    expected = 1.0 / float(pairwise.min(1).values.mean())
    assert float(memory.inv_distance0) == pytest.approx(expected, rel=1e-5)
    distance = memory.read(torch.randn(1, 8, 4, 4), 0, want_nearest=False)[0]
    assert 0.1 < float(distance.mean()) < 10  # in units of the patches' spacing, not 1e6


def _head_reads_student(config: ModelConfig) -> bool:
    from dmgrd_edge.model.head import AnomalyMapHead

    head = AnomalyMapHead(
        64,
        4.0,
        "topk_mean",
        100,
        config.score_source == "combined",
        config.image_score == "student",
    )
    return head.score_from_student


def test_parity_check_refuses_a_map_off_by_more_than_its_limit_at_the_maps_peak(
    combined_ckpt, tmp_path
):
    from dmgrd_edge.export.onnx_export import ExportError, check_parity
    from dmgrd_edge.model.dmgrd import AnomalyOutput
    from dmgrd_edge.options import BatchProfile
    from dmgrd_edge.train.checkpoint import load_model

    bundle = tmp_path / "bundle"
    _export(combined_ckpt, bundle)
    model, _ = load_model(combined_ckpt)
    model.eval()
    images = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        peak = max(1.0, float(model(torch.from_numpy(images)).anomaly_map.abs().max()))

    class Shifted(torch.nn.Module):  # PyTorch's map moved by a constant
        def __init__(self, by):
            super().__init__()
            self.by = by

        def forward(self, x):
            out = model(x)
            return AnomalyOutput(out.anomaly_map + self.by, out.score)

    batch, onnx_path = BatchProfile(2, 2, 2), bundle / "model.onnx"
    limit = 1e-2 * peak
    parity = check_parity(Shifted(0.8 * limit), onnx_path, images, batch, 1e-3, 1e-2)
    assert 0.7 * limit < parity.map_max_abs_err < 0.9 * limit
    with pytest.raises(ExportError, match="map abs. error"):
        check_parity(Shifted(1.2 * limit), onnx_path, images, batch, 1e-3, 1e-2)
