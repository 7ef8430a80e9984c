"""RD's one-class bottleneck embedding (OCBE) and the student decoders, per backbone family.

ResNet teachers get the decoders of Reverse Distillation (a mirror of layer3..layer1 with
ConvTranspose upsampling in the first block of each stage). The EfficientNet-Lite teachers
(Lite0/1/2) get a light decoder of inverted residual blocks that mirrors their three levels
(widths from the teacher's channels); the embedding is 256 channels at stride 32.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import BackboneSpec
from .blocks import Chain, basic_block, bottleneck_block, conv_bn, inverted_residual

# family -> (embedding channels, decoder blocks per stage (deepest first), bottleneck width factor)
FAMILY = {
    "resnet_basic": (512, (2, 2, 2)),
    "resnet_bottleneck": (2048, (3, 4, 6)),
    "mbconv": (256, (2, 2, 1)),
}


def _width(spec: BackboneSpec, c_out: int) -> int:
    """Inner width of a bottleneck block producing c_out (WRN50-2 doubles it)."""
    return c_out // 4 * (2 if spec.name == "wide_resnet50_2" else 1)


def _block(spec: BackboneSpec, c_in: int, c_out: int, mode: str) -> nn.Module:
    if spec.family == "resnet_basic":
        return basic_block(c_in, c_out, mode)
    if spec.family == "resnet_bottleneck":
        return bottleneck_block(c_in, c_out, _width(spec, c_out), mode)
    return inverted_residual(c_in, c_out, expand=4, kernel=3, mode=mode)


class OCBE(nn.Module):
    """Fuses the three levels into one compact embedding at stride 32."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        c1, c2, c3 = spec.channels
        embed = FAMILY[spec.family][0]
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.level1 = Chain(*conv_bn(c1, c2, 3, 2), relu(), *conv_bn(c2, c3, 3, 2), relu())
        self.level2 = Chain(*conv_bn(c2, c3, 3, 2), relu())
        blocks = [_block(spec, 3 * c3, embed, "down")] + [
            _block(spec, embed, embed, "same") for _ in range(2)
        ]
        self.fuse = nn.Sequential(*blocks)
        self.out_channels = embed

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([self.level1(levels[0]), self.level2(levels[1]), levels[2]], dim=1)
        return self.fuse(x)


class StudentDecoder(nn.Module):
    """Embedding -> student features with the teacher's three shapes."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        embed, counts = FAMILY[spec.family]
        stages, c_in = [], embed
        for c_out, count in zip(reversed(spec.channels), counts):
            blocks = [_block(spec, c_in, c_out, "up")] + [
                _block(spec, c_out, c_out, "same") for _ in range(count - 1)
            ]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.ModuleList(stages)

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        outputs, x = [], embedding
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]  # shallowest level first, like the teacher
