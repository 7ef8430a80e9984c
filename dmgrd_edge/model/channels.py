"""Channel groups: channels inside a block that can be removed without changing the shape of
anything the block hands on, how each group is ranked and how it is cut.

A block that has such channels declares them (``Prunable``): ``channel_groups(name)`` lists
its groups, named after the block's path in the model. ``Chain`` (model/blocks.py: the
residual and inverted-residual bodies, OCBE's strided levels) declares each
conv -> BatchNorm -> activation [-> depthwise conv -> BatchNorm -> activation] -> conv run
of its layers; MSFF's ``FusionBlock`` declares its ``conv * attention`` product and its
``reduce -> refine`` pair. The pruner (model/pruning.py) ranks and cuts what the blocks
declare; ``apply_widths`` gives a freshly built model a pruned model's shapes, so the model
rebuilds a pruned checkpoint without the pruner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.ReLU6)


@runtime_checkable
class ChannelGroup(Protocol):
    """Channels between a producer and its consumers, removable together."""

    name: str  # "<block path>.<what>": pruned widths are stored under it

    @property
    def width(self) -> int: ...

    def importance(self) -> torch.Tensor: ...  # one value per channel, larger: more important

    def shrink(self, keep: torch.Tensor) -> None: ...  # keep these channels (sorted), in place


@runtime_checkable
class Prunable(Protocol):
    """A block that declares the channel groups inside it."""

    def channel_groups(self, name: str) -> list[ChannelGroup]: ...  # name: the block's path


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.groups == 1


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


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


def chain_groups(seq: nn.Sequential, name: str) -> list[Group]:
    """The groups of a chain of layers: every producer conv followed by BatchNorm and an
    activation [then a depthwise conv, BatchNorm, activation] and then a consumer conv."""
    groups = []
    for i in range(len(seq)):
        found = _match(seq, i)
        if found:
            groups.append(Group(f"{name}.{i}", seq, i, *found))
    return groups


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


def declared_groups(model: nn.Module) -> list[ChannelGroup]:
    """Every group the model's blocks declare, in module order (the teacher declares none)."""
    return [
        group
        for path, module in model.named_modules()
        if isinstance(module, Prunable)
        for group in module.channel_groups(path)
    ]


def cut(group: ChannelGroup, keep) -> None:
    """Keep only channels ``keep`` of the group, in place."""
    group.shrink(torch.as_tensor(keep, dtype=torch.long).sort().values)


def apply_widths(model: nn.Module, widths: dict[str, int]) -> None:
    """Give a freshly built model the shapes of a pruned one (weights come from its state dict)."""
    groups = {g.name: g for g in declared_groups(model)}
    unknown = sorted(set(widths) - set(groups))
    if unknown:
        raise ValueError(f"pruned widths name groups this model does not have: {unknown[:5]}")
    for name, width in widths.items():
        if width < groups[name].width:
            cut(groups[name], torch.arange(width))
