"""Multi-scale feature fusion (from MemSeg), shared by both memory paths."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .channels import ChannelGroup, ProductGroup, ReducePair


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class NonLocal(nn.Module):
    """Embedded dot-product non-local block with 2x2 max-pooled keys/values; the output
    projection's BatchNorm starts at zero so the block starts as identity."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)
        # after pruning (model/channels.py): the input channels the block still outputs
        self.register_buffer("keep", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sizes as Python ints: the exported graph gets constant shapes instead of a chain of
        # Shape/Gather/Concat nodes per reshape (the batch stays dynamic through -1)
        inner, h, w = self.theta.out_channels, int(x.shape[2]), int(x.shape[3])
        keys = (h // 2) * (w // 2)
        key = F.max_pool2d(self.phi(x), 2).reshape(-1, inner, keys)  # B, C', P'
        value = F.max_pool2d(self.g(x), 2).reshape(-1, inner, keys).transpose(1, 2)  # B, P', C'
        # dot-product attention normalised by the number of keys. There is no softmax, so
        # (query @ key) @ value == query @ (key @ value): the C' x C' product replaces the
        # P x P' attention matrix (at 256 px and stride 4: 4096 x 1024 values per image),
        # about 60x fewer multiply-adds and no large intermediate; equal up to rounding
        query = self.theta(x).reshape(-1, inner, h * w).transpose(1, 2) * (1.0 / keys)  # B, P, C'
        context = key @ value  # B, C', C'
        y = (query @ context).transpose(1, 2).reshape(-1, inner, h, w)
        return (x if self.keep is None else x.index_select(1, self.keep)) + self.out(y)


class FusionBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)
        self.attention = NonLocal(channels)
        self.reduce = conv3x3(channels, channels // 2)
        self.refine = conv3x3(channels // 2, channels // 2)

    def forward(self, x):
        return self.refine(self.reduce(self.conv(x) * self.attention(x)))

    def channel_groups(self, name: str) -> list[ChannelGroup]:
        """The product's channels (read by ``reduce``), then ``reduce``'s (read by ``refine``);
        the pair is ranked after the product is cut, as ``reduce``'s inputs then are."""
        return [ProductGroup(f"{name}.product", self), ReducePair(f"{name}.reduce", self)]


class SpatialAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


def resize_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear (align_corners) resize. An integer factor is given as the scale, which exports
    as a Resize with constant scales; a size would export with the batch read from the
    tensor's shape at run time (Shape/Slice/Concat before every Resize)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if height % h == 0 and width % w == 0:
        return F.interpolate(
            x, scale_factor=(height // h, width // w), mode="bilinear", align_corners=True
        )
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=True)


def upsample2(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return resize_to(x, int(like.shape[-2]), int(like.shape[-1]))


class MSFF(nn.Module):
    """Inputs: MI_l with 2*C_l channels. Outputs: Phi_l with C_l channels."""

    def __init__(self, channels: tuple[int, int, int]):
        super().__init__()
        self.blocks = nn.ModuleList(FusionBlock(2 * c) for c in channels)
        self.up3 = conv3x3(channels[2], channels[1])
        self.up2 = conv3x3(channels[1], channels[0])
        self.attention = nn.ModuleList(SpatialAttention() for _ in channels)

    def forward(self, memory_inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        b1, b2, b3 = (block(x) for block, x in zip(self.blocks, memory_inputs))
        f2 = b2 + self.up3(upsample2(b3, b2))
        f1 = b1 + self.up2(upsample2(f2, b1))
        m3 = self.attention[2](memory_inputs[2])
        m2 = self.attention[1](memory_inputs[1]) * upsample2(m3, b2)
        m1 = self.attention[0](memory_inputs[0]) * upsample2(m2, b1)
        return [f1 * m1, f2 * m2, b3 * m3]


class LinearFusion(nn.Module):
    """The ablation without MSFF: per level a 1x1 projection of MI_l (2*C_l channels) to C_l,
    no attention, no cross-level path."""

    def __init__(self, channels: tuple[int, int, int]):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for c in channels)

    def forward(self, memory_inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(x) for p, x in zip(self.project, memory_inputs)]
