"""Residual blocks for the bottleneck and the student decoders (ResNet basic/bottleneck,
their reversed "de-" versions with ConvTranspose upsampling, and inverted residuals)."""

from __future__ import annotations

from torch import nn

from .channels import ChannelGroup, chain_groups


class Chain(nn.Sequential):
    """Layers run one after another that declare their channel groups (model/channels.py):
    each conv -> BatchNorm -> activation [-> depthwise conv -> BatchNorm -> activation] ->
    conv run inside them."""

    def channel_groups(self, name: str) -> list[ChannelGroup]:
        return chain_groups(self, name)


def conv_bn(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


def up_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(c_in, c_out, 2, 2, bias=False), nn.BatchNorm2d(c_out)]


class Residual(nn.Module):
    """out = act(body(x) + shortcut(x))."""

    def __init__(
        self, body: list[nn.Module], shortcut: list[nn.Module] | None, act: nn.Module | None
    ):
        super().__init__()
        self.body = Chain(*body)
        self.shortcut = nn.Sequential(*shortcut) if shortcut else nn.Identity()
        self.act = act or nn.Identity()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, mode: str) -> list | None:
    """The residual's projection when the block changes resolution or width, else None."""
    if mode == "same" and c_in == c_out:
        return None
    if mode == "up":
        return up_bn(c_in, c_out)
    return conv_bn(c_in, c_out, 1, 2 if mode == "down" else 1)


def basic_block(c_in: int, c_out: int, mode: str = "same") -> Residual:
    """ResNet basic block; mode 'down' (stride 2), 'up' (ConvTranspose x2) or 'same'."""
    first = {
        "down": conv_bn(c_in, c_out, 3, 2),
        "up": up_bn(c_in, c_out),
        "same": conv_bn(c_in, c_out),
    }[mode]
    body = first + [nn.ReLU(inplace=True)] + conv_bn(c_out, c_out)
    return Residual(body, _shortcut(c_in, c_out, mode), nn.ReLU(inplace=True))


def bottleneck_block(c_in: int, c_out: int, width: int, mode: str = "same") -> Residual:
    """ResNet bottleneck block (1x1 -> 3x3 or up -> 1x1)."""
    middle = {
        "down": conv_bn(width, width, 3, 2),
        "up": up_bn(width, width),
        "same": conv_bn(width, width),
    }[mode]
    body = conv_bn(c_in, width, 1) + [nn.ReLU(inplace=True)] + middle + [nn.ReLU(inplace=True)]
    body += conv_bn(width, c_out, 1)
    return Residual(body, _shortcut(c_in, c_out, mode), nn.ReLU(inplace=True))


def inverted_residual(
    c_in: int, c_out: int, expand: int = 4, kernel: int = 3, mode: str = "same"
) -> nn.Module:
    """MBConv without squeeze-excitation (Lite style: ReLU6, linear output)."""
    mid = c_in * expand
    if mode == "up":
        body = up_bn(c_in, mid) + [nn.ReLU6(inplace=True)]
    else:
        body = conv_bn(c_in, mid, 1) + [nn.ReLU6(inplace=True)]
    body += conv_bn(mid, mid, kernel, 2 if mode == "down" else 1, groups=mid) + [
        nn.ReLU6(inplace=True)
    ]
    body += conv_bn(mid, c_out, 1)
    if mode == "same" and c_in == c_out:
        return Residual(body, None, None)
    return Chain(*body)
