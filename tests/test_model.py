"""Backbones, memory read, fusion, head and the whole DM-GRD module (plain torch)."""

import pytest
import torch
from torch.nn import functional as F

from dmgrd_edge.config import ModelConfig
from dmgrd_edge.data import preprocess
from dmgrd_edge.data.synthetic import make_image
from dmgrd_edge.errors import ConfigError, WeightsError
from dmgrd_edge.model import BACKBONES, DMGRD, AnomalyOutput, create_teacher
from dmgrd_edge.model.backbones import EfficientNetLite0Features, efficientnet_lite0_weights_path
from dmgrd_edge.model.head import AnomalyMapHead, gaussian_kernel1d
from dmgrd_edge.model.memory import MemoryBank


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_keeps_declared_channels_and_strides(name):
    teacher, _ = create_teacher(name, pretrained=(name == "efficientnet_lite0"))
    spec = BACKBONES[name]
    with torch.no_grad():
        levels = teacher(torch.zeros(1, 3, 64, 96))
    assert [f.shape[1] for f in levels] == list(spec.channels)
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in levels] == [(s, s) for s in spec.strides]
    assert not any(p.requires_grad for p in teacher.parameters())


def test_lite0_weights_load_strictly_and_give_sane_features():
    path = efficientnet_lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    body = EfficientNetLite0Features()
    used = set(body.state_dict())
    assert used <= set(state), "every parameter of our definition must exist in the shipped file"
    assert all(k.startswith(("_blocks.11", "_blocks.12", "_blocks.13", "_blocks.14", "_blocks.15",
                             "_conv_head", "_bn1", "_fc")) for k in set(state) - used)
    teacher, source = create_teacher("efficientnet_lite0")
    assert "ImageNet" in source
    cfg = ModelConfig(image_size=128).preprocess()
    images = {c: [make_image(c, 0, "train", i, 128)[0] for i in range(2)] for c in ("woven_fabric", "washer")}
    with torch.no_grad():
        desc = {c: [teacher(torch.from_numpy(preprocess(im, cfg)))[2].mean(dim=(2, 3))[0] for im in ims]
                for c, ims in images.items()}
    same = F.cosine_similarity(desc["washer"][0], desc["washer"][1], dim=0)
    cross = F.cosine_similarity(desc["washer"][0], desc["woven_fabric"][0], dim=0)
    assert same > 0.9 and same > cross + 0.1, (same, cross)
    random_teacher, _ = create_teacher("efficientnet_lite0", pretrained=False)
    x = torch.from_numpy(preprocess(images["washer"][0], cfg))
    with torch.no_grad():
        assert not torch.allclose(teacher(x)[0], random_teacher(x)[0])
        assert all(torch.isfinite(f).all() and 0.05 < f.std() < 20 for f in teacher(x))


def test_resnet_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
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
    query = [bank.maps(level)[[3, 1]] + 0.01 * torch.randn_like(bank.maps(level)[[3, 1]]) for level in range(3)]
    fused, index = bank(query, "nearest")
    assert index.tolist() == [3, 1]
    assert [f.shape[1] for f in fused] == [8, 12, 16]
    scale = bank.maps(0).pow(2).mean().rsqrt()
    torch.testing.assert_close(fused[0][:, :4], query[0] * scale)
    torch.testing.assert_close(fused[0][:, 4:], ((bank.maps(0)[[3, 1]] - query[0]) * scale) ** 2)
    unscaled = MemoryBank(5, (4, 6, 8), ((8, 8), (4, 4), (2, 2)), scale_inputs=False)
    unscaled.fill([bank.maps(level) for level in range(3)])
    torch.testing.assert_close(unscaled(query, "nearest")[0][0][:, 4:], (bank.maps(0)[[3, 1]] - query[0]) ** 2)


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
    assert float((profile * x ** 2).sum()) == pytest.approx(16.0, rel=0.01)


def test_head_blur_equals_the_2d_gaussian_convolution():
    """The row/column depthwise form computes the plain separable blur (zero padding), per image."""
    head = AnomalyMapHead(48, 3.0, "topk_mean", 100)
    x = torch.rand(2, 1, 48, 48)
    x[1, 0, 5:9, 30:40] += 3  # not symmetric: a mixed-up transpose would show
    k = gaussian_kernel1d(3.0)
    reference = F.conv2d(x, (k[:, None] * k[None, :]).view(1, 1, k.numel(), k.numel()), padding=head.pad)
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
    model = DMGRD(ModelConfig(image_size=64, use_memory=use_memory, selection=selection), pretrained=False)
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
    model = DMGRD(ModelConfig(image_size=64, memory_size=3), pretrained=False)
    keys = model.state_dict().keys()
    assert {"normal_memory.maps0", "abnormal_memory.maps2", "normal_memory.means1"} <= set(keys)
    per_item = sum(c * (64 // s) ** 2 + c + 1 for c, s in zip((24, 40, 112), (4, 8, 16)))
    assert model.memory_bytes() == 2 * 4 * (3 * per_item + 3)
    plain = DMGRD(ModelConfig(image_size=64, use_memory=False), pretrained=False)
    assert not any("memory" in k or "msff" in k for k in plain.state_dict())
