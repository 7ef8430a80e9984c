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

import torch
from torch import nn

from .channels import Group, ProductGroup, ReducePair, _is_conv, _is_depthwise

ACTIVATIONS = (nn.ReLU, nn.ReLU6)
SCOPES = ("msff", "bottleneck", "student")


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
