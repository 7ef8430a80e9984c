"""Structured pruning: removing channels that carry nothing changes no output (all three
kinds of group, two backbone families), a pruned model rebuilds from its config and loads
strictly, and `dmgrd-edge prune` -> fine-tune -> export works end to end with INT8."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from dmgrd_edge.config import PAPER_MODEL_FIELDS, ModelConfig, TrainConfig
from dmgrd_edge.model import DMGRD
from dmgrd_edge.model.channels import Group, ProductGroup, ReducePair
from dmgrd_edge.model.pruning import find_groups, kept_width, prune, trainable_parameter_count


def silence_half(model) -> None:
    """Make the first half of every group's channels carry exactly zero."""
    for group in find_groups(model):
        n = group.width // 2
        if isinstance(group, Group):  # BatchNorm -> 0 then ReLU/ReLU6 -> 0
            for j in group.norms:
                norm = group.sequential[j]
                norm.weight.data[:n], norm.bias.data[:n] = 0.0, -1.0
                norm.weight.data[n:] = (
                    norm.weight.data[n:].abs() + 0.5
                )  # and the rest clearly alive
        elif isinstance(group, ProductGroup):
            group.block.conv.weight.data[:n], group.block.conv.bias.data[:n] = 0.0, 0.0
        else:
            group.block.reduce.weight.data[:n], group.block.reduce.bias.data[:n] = 0.0, 0.0


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_removing_silent_channels_changes_nothing(backbone):
    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, image_size=64, memory_size=4, **PAPER_MODEL_FIELDS)
    model = DMGRD(config, pretrained=False).eval()
    model.fill_memory(torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64))
    for block in model.msff.blocks:  # a trained non-local block is not the identity it starts as
        block.attention.out[1].weight.data.normal_()
        block.attention.out[1].bias.data.normal_()
    kinds = {type(g) for g in find_groups(model)}
    assert kinds == {Group, ProductGroup, ReducePair}
    silence_half(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    params = trainable_parameter_count(model)
    teacher = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(("teacher.", "normal_memory."))
    }
    widths = prune(model, 0.5, multiple=1)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before.anomaly_map, after.anomaly_map, atol=1e-5)
    assert torch.allclose(before.score, after.score, atol=1e-5)
    assert trainable_parameter_count(model) < 0.6 * params
    assert all(torch.equal(model.state_dict()[k], v) for k, v in teacher.items())  # never touched
    # the training path runs on the pruned shapes
    model.train()
    features = model.training_features(x)
    assert [f.shape for f in features.student] == [f.shape for f in features.teacher]
    # rebuilt from the config alone, the pruned model takes the weights strictly
    rebuilt = DMGRD(dataclasses.replace(config, pruned_widths=widths), pretrained=False).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x).anomaly_map, model(x).anomaly_map)


def test_kept_widths_are_rounded_and_checked():
    assert (
        kept_width(512, 0.5, 8) == 256
        and kept_width(100, 0.5, 8) == 56
        and kept_width(20, 0.9, 8) == 8
    )
    assert kept_width(6, 0.5, 8) == 6  # never wider than it was
    with pytest.raises(ValueError):
        kept_width(64, 1.0, 8)
    torch.manual_seed(0)
    model = DMGRD(ModelConfig(image_size=64, memory_size=4, **PAPER_MODEL_FIELDS), pretrained=False)
    widths = prune(model, 0.3)
    assert all(w % 8 == 0 for w in widths.values())
    # the most important channels are the ones kept
    paper = ModelConfig(image_size=64, memory_size=4, **PAPER_MODEL_FIELDS)
    group = next(g for g in find_groups(DMGRD(paper, pretrained=False)) if isinstance(g, Group))
    norm = group.sequential[group.norms[0]]
    norm.weight.data[:] = torch.arange(group.width, dtype=torch.float32)
    producer_weights = group.sequential[group.producer].weight.detach().clone()
    width = kept_width(group.width, 0.5, 8)
    group.shrink(group.importance().argsort(descending=True)[:width].sort().values)
    assert torch.equal(group.sequential[group.producer].weight, producer_weights[-width:])


def test_prune_finetune_export_end_to_end(tmp_path, trained_ckpt):
    from dmgrd_edge.export.pipeline import export_bundle
    from dmgrd_edge.train.checkpoint import load_model
    from dmgrd_edge.options import PruneJob
    from dmgrd_edge.train.prune import prune_checkpoint

    from dmgrd_edge.options import BatchProfile, ExportOptions

    out = tmp_path / "pruned"
    finetune = TrainConfig(steps=2, batch_size=4, warmup_steps=1, val_every=2, checkpoint_every=2)
    summary = prune_checkpoint(
        PruneJob(checkpoint=str(trained_ckpt), out_dir=str(out), ratio=0.5, finetune=finetune)
    )
    original, _ = load_model(trained_ckpt)
    pruned, payload = load_model(out / "last.pt")
    assert (out / "pruned.pt").is_file() and (out / "best.pt").is_file()
    assert (
        trainable_parameter_count(pruned)
        == summary["trainable_params_after"]
        < 0.6 * summary["trainable_params_before"]
    )
    assert payload["metadata"]["pruning"]["ratio"] == 0.5 and payload["metadata"]["memory"]
    # the memory banks and the teacher are those of the run it came from
    for key, value in original.state_dict().items():
        if key.startswith(("teacher.", "normal_memory.", "abnormal_memory.")):
            assert torch.equal(pruned.state_dict()[key], value), key
    bundle = tmp_path / "bundle"
    manifest = export_bundle(
        ExportOptions(
            checkpoint=out / "last.pt",
            out=bundle,
            int8=True,
            calib_count=8,
            batch=BatchProfile(1, 1, 4),
        ),
        log=lambda _: None,
    )
    assert manifest["source"]["pruning"]["ratio"] == 0.5 and manifest["model"]["pruned_widths"]
    assert {"model.onnx", "model.int8.onnx", "model.int8-cpu.onnx"} <= set(manifest["files"])


@pytest.mark.fault("command-line number out of range")
def test_prune_cli_refuses_bad_input_and_keeps_files(tmp_path, trained_ckpt):
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "dmgrd_edge.cli", "prune", *map(str, args)],  # noqa: E731
        capture_output=True,
        text=True,
    )
    proc = run(trained_ckpt, "--out", tmp_path / "a", "--ratio", 1.5, "--steps", 0)
    assert proc.returncode == 2 and "--ratio" in proc.stdout + proc.stderr
    taken = tmp_path / "b"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep")
    proc = run(trained_ckpt, "--out", taken, "--steps", 0)
    assert proc.returncode == 2 and "not empty" in proc.stdout + proc.stderr
    assert (taken / "notes.txt").read_text() == "keep" and len(list(taken.iterdir())) == 1
    proc = run(trained_ckpt, "--out", tmp_path / "c", "--ratio", 0.25, "--steps", 0)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["ratio"] == 0.25
    assert (tmp_path / "c" / "pruned.pt").is_file()
