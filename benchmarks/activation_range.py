"""Largest absolute activation per top-level module of trained checkpoints, on their test
images: tells which parts fit fp16 (max 65504) and which must stay fp32.

    python benchmarks/activation_range.py RUN/washer/last.pt [more checkpoints]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from dmgrd_edge.train.checkpoint import load_model

from dmgrd_edge.data.datasets import index_category
from dmgrd_edge.data.imageio import read_image
from dmgrd_edge.data.preprocess import preprocess
from dmgrd_edge.report import write_result


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


@torch.no_grad()
def activation_range(checkpoint: Path, images: int = 16) -> dict[str, float]:
    model, payload = load_model(checkpoint)
    meta = payload["metadata"]
    test = index_category(meta["dataset"], meta["root"], meta["category"]).test
    picked = [test[i] for i in np.linspace(0, len(test) - 1, min(images, len(test))).astype(int)]
    largest: dict[str, float] = {}

    def hook(name):
        def record(module, inputs, output):
            values = [float(t.abs().max()) for t in _tensors(output) if t.is_floating_point()]
            if values:
                largest[name] = max(largest.get(name, 0.0), max(values))

        return record

    for name, module in model.named_modules():
        if name and "." not in name:
            module.register_forward_hook(hook(name))
        elif name.count(".") == 1 and name.startswith(("msff.", "bottleneck.")):
            module.register_forward_hook(hook(name))
    model(
        torch.from_numpy(
            preprocess([read_image(s.path) for s in picked], model.config.preprocess())
        )
    )
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out", default="benchmarks/results/activation_range.json")
    args = parser.parse_args()
    results = {}
    for ckpt in args.checkpoints:
        results[str(ckpt)] = activation_range(ckpt)
        top = sorted(results[str(ckpt)].items(), key=lambda kv: -kv[1])
        print(ckpt, " ".join(f"{k}={v:.3g}" for k, v in top[:6]))
    write_result(args.out, results)


if __name__ == "__main__":
    main()
