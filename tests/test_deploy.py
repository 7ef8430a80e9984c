"""Deployment rewrites compute the same function as the trained module."""

import pytest
import torch
from torch import nn

from dmgrd_edge.config import ModelConfig
from dmgrd_edge.export.deploy import deployable, pixel_shuffle_up
from dmgrd_edge.model import DMGRD
from dmgrd_edge.model.msff import NonLocal


def _randomise_batchnorm(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize(
    "with_bn, bias, act",
    [
        (True, False, None),
        (False, True, None),
        (False, False, None),
        (True, False, nn.ReLU6()),
        (False, True, nn.ReLU()),
    ],
)
def test_pixel_shuffle_up_equals_conv_transpose(with_bn, bias, act):
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(5, 3, 2, 2, bias=bias)
    bn = nn.BatchNorm2d(3)
    _randomise_batchnorm(bn)
    reference = nn.Sequential(
        deconv, *([bn] if with_bn else []), *([act] if act is not None else [])
    )
    reference.eval()
    rewritten = pixel_shuffle_up(deconv, bn if with_bn else None, act).eval()
    x = torch.randn(2, 5, 7, 6)
    with torch.no_grad():
        expected, got = reference(x), rewritten(x)
    assert got.shape == expected.shape == (2, 3, 14, 12)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone, count", [("efficientnet_lite0", 3), ("resnet18", 6)])
def test_deployable_model_matches_the_trained_one(backbone, count):
    torch.manual_seed(0)
    model = DMGRD(
        ModelConfig(backbone=backbone, image_size=64, memory_size=2, image_score="auto"),
        pretrained=False,
    ).eval()
    _randomise_batchnorm(model.student)
    x = torch.randn(2, 3, 64, 64)
    model.fill_memory(x, x.flip(-1))
    deployed, rewrites = deployable(model)
    assert rewrites == {
        "conv_transpose_to_pixel_shuffle": count,
        "conv_transpose_kept": 0,
        "image_score_fixed": "map",  # auto chooses; a fresh model's flag is the map's
    }
    assert any(
        isinstance(m, nn.ConvTranspose2d) for m in model.modules()
    )  # the original is untouched
    assert model.head.choose_score and not deployed.head.choose_score
    with torch.no_grad():
        a, b = model(x), deployed(x)
    torch.testing.assert_close(b.anomaly_map, a.anomaly_map, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.score, a.score, rtol=1e-4, atol=1e-6)


def test_nonlocal_reassociation_equals_the_attention_matrix_form():
    torch.manual_seed(0)
    block = NonLocal(8).eval()
    nn.init.normal_(block.out[1].weight)  # leave the identity start
    x = torch.randn(2, 8, 12, 10)
    with torch.no_grad():
        b, _, h, w = x.shape
        key = nn.functional.max_pool2d(block.phi(x), 2).flatten(2)
        value = nn.functional.max_pool2d(block.g(x), 2).flatten(2).transpose(1, 2)
        query = block.theta(x).flatten(2).transpose(1, 2)
        attention = (query @ key) / key.shape[-1]  # the P x P' matrix of the textbook form
        y = (attention @ value).transpose(1, 2).reshape(b, -1, h, w)
        torch.testing.assert_close(block(x), x + block.out(y), rtol=1e-5, atol=1e-5)
