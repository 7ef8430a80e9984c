"""Deployment rewrites of the trained module, applied before ONNX export.

Each rewrite computes the same function as the module it replaces (the export's parity
check compares the exported graph with the original, unrewritten model on real images).

* ``ConvTranspose2d(kernel 2, stride 2)`` followed by ``BatchNorm2d`` -> a 1x1 ``Conv2d``
  with 4x the output channels (BatchNorm folded in) and a pixel shuffle. With kernel ==
  stride every input pixel writes its own 2x2 output block, so the two are the same map.
  ONNX Runtime's CPU provider has fast fp32 and int8 kernels for 1x1 convolutions but runs
  ConvTranspose in fp32 through a slow col2im path and has no integer ConvTranspose kernel;
  TensorRT parses both forms.

  The pixel shuffle is written channels-last (``SubPixelInterleave``): Transpose to NHWC,
  Reshape [N, H, W, 2, 2, C], swap the W and row-offset axes, Reshape [N, 2H, 2W, C],
  Transpose back. The conv's output channels are ordered offset-major ((a*2+b)*C + c), so
  the swap moves whole runs of C contiguous values. ONNX Runtime's CPU provider runs its
  integer convolutions in NHWC, cancels the two outer transposes against its own layout
  changes and, in the INT8 graph, runs the middle on uint8; ``DepthToSpace`` it computes
  in fp32 between a DequantizeLinear and a QuantizeLinear, and it was the largest non-conv
  cost of the INT8 graph (``benchmarks/ort_profile.py``, docs/BENCHMARKS.md).

* A head that chooses its image score (``--image-score auto``) -> the fixed rule its stored
  flag names. Training and ``rescore`` set the flag once, on validation; the flag is a
  constant of the graph, so the graph computes only the chosen rule's score (and, for the
  map's rule, blurs the combined map once instead of each share on its own).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class SubPixelInterleave(nn.Module):
    """[N, 4C, H, W] with channel (a*2+b)*C + c -> [N, C, 2H, 2W] with
    y[c, 2i+a, 2j+b] = x[(a*2+b)*C + c, i, j], through channels-last (see the module text).
    Static H, W; any batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c4, h, w = x.shape
        c = int(c4) // 4
        x = x.permute(0, 2, 3, 1).reshape(-1, int(h), int(w), 2, 2, c)  # [N, i, j, a, b, c]
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(
            -1, 2 * int(h), 2 * int(w), c
        )  # [N, (i a), (j b), c]
        return x.permute(0, 3, 1, 2)


class PixelShuffleUp(nn.Sequential):
    """Conv 1x1 (C_in -> 4 C_out) + SubPixelInterleave: a kernel-2 / stride-2 transposed conv."""


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def pixel_shuffle_up(
    deconv: nn.ConvTranspose2d, bn: nn.BatchNorm2d | None, act: nn.Module | None = None
) -> PixelShuffleUp:
    """y[co, 2i+a, 2j+b] = sum_ci x[ci, i, j] W[ci, co, a, b]  ==  the interleave of a 1x1 conv
    whose output channel (a*2+b)*C_out + co has weights W[:, co, a, b]."""
    c_in, c_out = deconv.in_channels, deconv.out_channels
    weight = deconv.weight.permute(1, 2, 3, 0).reshape(c_out, 4, c_in)  # [co, a*2+b, ci]
    bias = deconv.bias if deconv.bias is not None else torch.zeros(c_out, dtype=weight.dtype)
    if bn is not None:
        scale, shift = _bn_scale_shift(bn)
        weight = weight * scale.view(-1, 1, 1)
        bias = bias * scale + shift
    conv = nn.Conv2d(c_in, 4 * c_out, 1, bias=True)
    conv.weight.copy_(weight.transpose(0, 1).reshape(4 * c_out, c_in, 1, 1))  # [a*2+b, co, ci]
    conv.bias.copy_(bias.repeat(4))
    return PixelShuffleUp(*(m for m in (conv, act, SubPixelInterleave()) if m is not None))


# per-element activations commute with the interleave; moved in front of it, they follow the
# conv directly, and ONNX Runtime fuses them into its integer conv instead of running
# DequantizeLinear -> Clip -> QuantizeLinear after the interleave
ELEMENTWISE = (nn.ReLU, nn.ReLU6)


def _rewritable(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.ConvTranspose2d)
        and module.kernel_size == (2, 2)
        and module.stride == (2, 2)
        and module.padding == (0, 0)
        and module.output_padding == (0, 0)
        and module.groups == 1
        and module.dilation == (1, 1)
    )


def _rewrite_sequential(seq: nn.Sequential) -> int:
    children = list(seq.children())
    out, count, i = [], 0, 0
    while i < len(children):
        child = children[i]
        if _rewritable(child):
            bn = (
                children[i + 1]
                if i + 1 < len(children) and isinstance(children[i + 1], nn.BatchNorm2d)
                else None
            )
            after = i + (2 if bn is not None else 1)
            act = (
                children[after]
                if after < len(children) and isinstance(children[after], ELEMENTWISE)
                else None
            )
            out.append(pixel_shuffle_up(child, bn, act))
            for _ in range((bn is not None) + (act is not None)):
                out.append(
                    nn.Identity()
                )  # keeps the indices, hence the exported node names, stable
                i += 1
            count += 1
        else:
            out.append(child)
        i += 1
    if count:
        for index, module in enumerate(out):
            seq[index] = module
    return count


def deployable(model: nn.Module) -> tuple[nn.Module, dict[str, int | str]]:
    """An eval-mode fp32 copy of ``model`` with the rewrites applied, and what was rewritten."""
    model = copy.deepcopy(model).eval().float().cpu()
    count = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential) and not isinstance(module, PixelShuffleUp):
            count += _rewrite_sequential(module)
    kept = sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    rewrites: dict[str, int | str] = {
        "conv_transpose_to_pixel_shuffle": count,
        "conv_transpose_kept": kept,
    }
    head = getattr(model, "head", None)
    chosen = head.fix_image_score() if hasattr(head, "fix_image_score") else None
    if chosen is not None:
        rewrites["image_score_fixed"] = chosen
    return model, rewrites
