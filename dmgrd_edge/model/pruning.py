"""Structured channel pruning of the trainable part (bottleneck, student decoder, MSFF).

Only channels *inside* a block are removed, so every tensor the rest of the model sees (the
memory-fused features, the embedding, the student features compared with the teacher's, the
anomaly map) keeps its shape. The teacher, the memory banks and the map head are never
touched. The pruner walks the model's modules and takes the channel groups each block
declares about itself (``Prunable.channel_groups``, model/channels.py); it knows no block
by name. Three kinds of group are declared:

- a ``Chain`` of layers (the residual and inverted-residual blocks, OCBE's levels)::

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

from torch import nn

from .channels import ChannelGroup, cut, declared_groups


def find_groups(model: nn.Module) -> list[ChannelGroup]:
    """The channel groups the model's blocks declare (model/channels.py), in module order."""
    return declared_groups(model)


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
            cut(group, group.importance().argsort(descending=True)[:width])
        widths[group.name] = width
    return widths


def trainable_parameter_count(model: nn.Module) -> int:
    """Parameters outside the frozen teacher (the memory banks are buffers, not counted)."""
    return sum(p.numel() for p in model.trainable_parameters())
