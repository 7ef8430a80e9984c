"""Run by tests/test_distributed.py under torchrun (2 gloo processes): one step of a small
conv/BatchNorm network whose loss mixes images of the batch, in float64. Rank 0 computes
the single-process gradient of the whole batch; each rank then runs its half through
train/distributed.py (SyncedBatchNorm2d, the gathered batch, DDP) and rank 0 writes the
largest relative gradient difference, also for plain per-rank BatchNorm (which must differ)."""

import copy
import json
import sys

import torch
from torch import nn

from dmgrd_edge.train import distributed


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
        )  # fmt: skip

    def training_features(self, x):
        return [self.body(x)]

    @torch.no_grad()
    def teacher_features(self, x):
        return [x]


def loss_of(features):
    f = features[0]
    return f.pow(2).mean() + (f[0] * f[3]).mean() + f[:2].std()  # images with each other


def gradients(model):
    return [p.grad.clone() for p in model.parameters()]


def worst(a, b):
    """The largest difference relative to the size of all gradients (the conv biases in front
    of a BatchNorm have a gradient of ~0, relative to which any rounding is huge)."""
    scale = torch.cat([x.flatten() for x in a]).abs().max()
    return max(float((x - y).abs().max() / scale) for x, y in zip(a, b))


def main(out: str) -> None:
    torch.manual_seed(0)
    reference = Net().double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    synced, plain = copy.deepcopy(reference), copy.deepcopy(reference)
    loss_of(reference.training_features(x)).backward()
    with distributed.session("cpu") as ctx:
        part = x[2 * ctx.rank : 2 * ctx.rank + 2]
        forward = ctx.forward(ctx.prepare_model(synced))
        loss_of(ctx._gather(forward(part, part)[0])).backward()
        forward_plain = distributed.Single.forward(ctx, plain)  # no DDP, no synced statistics
        loss_of(ctx._gather(forward_plain(part, part)[0])).backward()
        summed = [p.grad.clone() for p in plain.parameters()]
        for g in summed:  # what DDP would average
            torch.distributed.all_reduce(g)
            g /= ctx.world_size
        if ctx.is_main:
            result = {
                "synced": worst(gradients(reference), gradients(synced)),
                "plain": worst(gradients(reference), summed),
                "world_size": ctx.world_size,
            }
            with open(out, "w") as handle:
                json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1])
