"""Structured channel pruning of the trainable part (bottleneck, student decoder, MSFF).

Only channels *inside* a block are removed, so every tensor the rest of the model sees (the
memory-fused features, the embedding, the student features compared with the teacher's, the
anomaly map) keeps its shape. The teacher, the memory banks and the map head are never
touched. Three kinds of group:

- a chain inside one ``nn.Sequential`` (the residual and inverted-residual blocks, OCBE)::

      producer conv (1x1, 3x3 or 2x2 transposed) -> BatchNorm -> activation
          [-> depthwise conv -> BatchNorm -> activation] -> consumer conv

  ranked by the product of the |gamma| of the BatchNorms a channel passes through (the
  "network slimming" criterion: a channel a BatchNorm scales to ~0 carries ~nothing);
- MSFF's ``reduce -> refine`` pair (no BatchNorm, no activation in between): ranked by the
  norm of the channel's filter times the norm of the weights reading it; the bias a removed
  channel added is folded into ``refine``'s bias (exact away from the border);
- MSFF's ``conv(x) * attention(x)`` product: the conv's filters, the non-local block's
  output projection and its residual (a constant index list, ``NonLocal.keep``) and
  ``reduce``'s inputs, ranked like the pair above.

Kept widths are multiples of ``multiple`` (8 by default: the width integer kernels and
TensorRT's INT8 tactics like). A pruned model's widths are stored in
``ModelConfig.pruned_widths`` ({group name: width}); ``DMGRD`` rebuilds the same shapes from
it, so a pruned checkpoint loads strictly and exports like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.ReLU6)
SCOPES = ("msff", "bottleneck", "student")


@dataclass
class Group:
    """A chain inside one nn.Sequential (see the module docstring)."""

    name: str  # "<sequential path>.<producer index>"
    sequential: nn.Sequential
    producer: int  # indices into the sequential
    norms: tuple[int, ...]
    depthwise: int | None
    consumer: int

    @property
    def width(self) -> int:
        return self.sequential[self.norms[0]].num_features

    def importance(self) -> torch.Tensor:
        score = torch.ones(self.width)
        for j in self.norms:
            score = score * self.sequential[j].weight.detach().abs().float().cpu()
        return score

    def shrink(self, keep: torch.Tensor) -> None:
        seq = self.sequential
        seq[self.producer] = _conv_like(seq[self.producer], None, keep)
        for j in self.norms:
            seq[j] = _norm_like(seq[j], keep)
        if self.depthwise is not None:
            seq[self.depthwise] = _conv_like(seq[self.depthwise], keep, None)
        seq[self.consumer] = _conv_like(seq[self.consumer], keep, None)


def _filter_norms(conv: nn.Module, dim: int) -> torch.Tensor:
    weight = conv.weight.detach().float().cpu().transpose(0, dim)
    return weight.reshape(weight.shape[0], -1).norm(dim=1)


@dataclass
class _FusionGroup:
    """Channels inside one MSFF FusionBlock (conv, attention, reduce, refine): the outputs of
    the ``producer`` conv that the ``consumer`` conv reads, ranked by the norm of each
    channel's filter times the norm of the weights reading it."""

    name: str
    block: nn.Module
    producer: ClassVar[str]
    consumer: ClassVar[str]

    @property
    def width(self) -> int:
        return getattr(self.block, self.producer).out_channels

    def importance(self) -> torch.Tensor:
        producer, consumer = getattr(self.block, self.producer), getattr(self.block, self.consumer)
        return _filter_norms(producer, 0) * _filter_norms(consumer, 1)


class ReducePair(_FusionGroup):
    """reduce's outputs = refine's inputs."""

    producer, consumer = "reduce", "refine"

    def shrink(self, keep: torch.Tensor) -> None:
        reduce, refine = self.block.reduce, self.block.refine
        gone = torch.ones(self.width, dtype=torch.bool)
        gone[keep] = False
        if reduce.bias is not None and refine.bias is not None and gone.any():
            # a removed channel still added its bias; refine sees it as a constant input
            bias = reduce.bias.detach()[gone.to(reduce.bias.device)]
            taps = refine.weight.detach()[:, gone.to(refine.weight.device)].sum(dim=(2, 3))
            refine.bias.data += taps @ bias
        self.block.reduce = _conv_like(reduce, None, keep)
        self.block.refine = _conv_like(refine, keep, None)


class ProductGroup(_FusionGroup):
    """conv(x) * attention(x) channels, read by reduce."""

    producer, consumer = "conv", "reduce"

    def shrink(self, keep: torch.Tensor) -> None:
        block, attention = self.block, self.block.attention
        block.conv = _conv_like(block.conv, None, keep)
        attention.out[0] = _conv_like(attention.out[0], None, keep)
        attention.out[1] = _norm_like(attention.out[1], keep)
        device = attention.out[1].weight.device
        kept = (
            keep.to(device)
            if attention.keep is None
            else attention.keep.index_select(0, keep.to(device))
        )
        attention.keep = kept.clone()
        block.reduce = _conv_like(block.reduce, keep, None)


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.groups == 1


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _match(seq: nn.Sequential, i: int) -> tuple[tuple[int, ...], int | None, int] | None:
    """(norm indices, depthwise index, consumer index) of a group whose producer is seq[i]."""
    layers = list(seq)

    def at(j: int, kind) -> bool:
        return j < len(layers) and isinstance(layers[j], kind)

    if not (_is_conv(layers[i]) and at(i + 1, nn.BatchNorm2d) and at(i + 2, ACTIVATIONS)):
        return None
    if (
        i + 3 < len(layers)
        and _is_depthwise(layers[i + 3])
        and at(i + 4, nn.BatchNorm2d)
        and at(i + 5, ACTIVATIONS)
        and i + 6 < len(layers)
        and _is_conv(layers[i + 6])
    ):
        return (i + 1, i + 4), i + 3, i + 6
    if i + 3 < len(layers) and _is_conv(layers[i + 3]):
        return (i + 1,), None, i + 3
    return None


def find_groups(model: nn.Module) -> list:
    groups: list = []
    for scope in SCOPES:
        root = getattr(model, scope, None)
        if root is None:
            continue
        for path, module in root.named_modules(prefix=scope):
            if isinstance(module, nn.Sequential):
                for i in range(len(module)):
                    found = _match(module, i)
                    if found:
                        groups.append(Group(f"{path}.{i}", module, i, *found))
            elif all(
                hasattr(module, a) for a in ("conv", "attention", "reduce", "refine")
            ):  # MSFF FusionBlock
                groups.append(ProductGroup(f"{path}.product", module))
                groups.append(ReducePair(f"{path}.reduce", module))
    return groups


def _conv_like(
    old: nn.Module, in_keep: torch.Tensor | None, out_keep: torch.Tensor | None
) -> nn.Module:
    """A copy of a conv with only the given input/output channels (weights sliced)."""
    weight = old.weight.detach()
    transposed = isinstance(old, nn.ConvTranspose2d)
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    depthwise = _is_depthwise(old)
    if depthwise:  # one filter per channel: the same subset on both sides
        out_keep = in_keep if in_keep is not None else out_keep
        in_keep = None
    if out_keep is not None:
        weight = weight.index_select(out_dim, out_keep.to(weight.device))
    if in_keep is not None:
        weight = weight.index_select(in_dim, in_keep.to(weight.device))
    c_out = weight.shape[out_dim]
    c_in = c_out if depthwise else weight.shape[in_dim]
    kwargs = dict(
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=c_out if depthwise else 1,
        bias=old.bias is not None,
    )
    new = (
        nn.ConvTranspose2d(c_in, c_out, output_padding=old.output_padding, **kwargs)
        if transposed
        else nn.Conv2d(c_in, c_out, **kwargs)
    )
    new = new.to(device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if old.bias is not None:
        bias = old.bias.detach()
        new.bias.data.copy_(
            bias.index_select(0, out_keep.to(bias.device)) if out_keep is not None else bias
        )
    return new.train(old.training)


def _norm_like(old: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), eps=old.eps, momentum=old.momentum).to(
        old.weight.device, old.weight.dtype
    )
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).data.copy_(
            getattr(old, name).detach().index_select(0, keep.to(old.weight.device))
        )
    new.num_batches_tracked.data.copy_(old.num_batches_tracked)
    return new.train(old.training)


def shrink(group, keep) -> None:
    """Keep only channels ``keep`` of the group, in place."""
    group.shrink(torch.as_tensor(keep, dtype=torch.long).sort().values)


def kept_width(width: int, ratio: float, multiple: int) -> int:
    """Channels kept when a fraction ``ratio`` is removed, rounded to ``multiple`` (at least one
    multiple, never more than the original)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    kept = max(multiple, int(math.ceil(width * (1.0 - ratio) / multiple)) * multiple)
    return min(width, kept)


def prune(model: nn.Module, ratio: float, multiple: int = 8) -> dict[str, int]:
    """Remove a fraction ``ratio`` of every group's channels, least important first.
    Returns {group name: kept width} for every group (also the unchanged ones)."""
    widths = {}
    for group in find_groups(model):
        width = kept_width(group.width, ratio, multiple)
        if width < group.width:
            shrink(group, group.importance().argsort(descending=True)[:width])
        widths[group.name] = width
    return widths


def apply_widths(model: nn.Module, widths: dict[str, int]) -> None:
    """Give a freshly built model the shapes of a pruned one (weights come from its state dict)."""
    groups = {g.name: g for g in find_groups(model)}
    unknown = sorted(set(widths) - set(groups))
    if unknown:
        raise ValueError(f"pruned widths name groups this model does not have: {unknown[:5]}")
    for name, width in widths.items():
        if width < groups[name].width:
            shrink(groups[name], torch.arange(width))


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(
        p.numel()
        for scope in SCOPES
        if getattr(model, scope, None) is not None
        for p in getattr(model, scope).parameters()
    )
