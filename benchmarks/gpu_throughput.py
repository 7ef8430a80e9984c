"""GPU figures for every backbone in one run: training img/s (AMP, channels_last) and
PyTorch inference latency of the deployable module (fp32 and fp16).

    python benchmarks/gpu_throughput.py --out results/gpu_throughput.json

Training img/s is given twice: the model step alone (batch already on the GPU) and the
whole trainer step (batch sampling, pseudo-anomaly synthesis and preprocessing on the CPU,
copy, step). ResNet teachers use random weights here (the timing does not depend on the
weight values; the lent GPU machine has no internet for ImageNet weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from dmgrd_edge.train.loop import BatchSource
from dmgrd_edge.train.losses import dmgrd_loss

from dmgrd_edge.config import ModelConfig, TrainConfig
from dmgrd_edge.data.preprocess import normalize
from dmgrd_edge.data.synthesis import AnomalySynthesizer
from dmgrd_edge.data.synthetic import make_image
from dmgrd_edge.model import BACKBONES, DMGRD
from dmgrd_edge.report import write_result


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_throughput(name, device, size, batch, steps, warmup, amp):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=name, image_size=size)
    model = DMGRD(cfg, pretrained=(name == "efficientnet_lite0")).to(device)
    model.fill_memory(
        torch.randn(30, 3, size, size, device=device), torch.randn(30, 3, size, size, device=device)
    )
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3, betas=(0.5, 0.999))
    dtype = (
        torch.bfloat16
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else torch.float16
    )
    images = np.stack([make_image("washer", 0, "train", i, size)[0] for i in range(16)])
    source = BatchSource(images, AnomalySynthesizer(size, size), TrainConfig(batch_size=batch))
    pre = cfg.preprocess()

    def step(x_aug, x_clean, is_anom):
        with torch.autocast(device.type, dtype=dtype, enabled=amp and device.type == "cuda"):
            features = model.training_features(x_aug)
            terms = dmgrd_loss(features, model.teacher_features(x_clean), is_anom)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()

    def to_device(arr):
        x = torch.from_numpy(normalize(arr, pre)).to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x

    model.train()
    aug, clean, _, is_anom = source.batch(0)
    fixed = (to_device(aug), to_device(clean), torch.from_numpy(is_anom).to(device))
    for _ in range(warmup):
        step(*fixed)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*fixed)
    _sync(device)
    model_only = steps * batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in range(steps):
        aug, clean, _, is_anom = source.batch(s)
        step(to_device(aug), to_device(clean), torch.from_numpy(is_anom).to(device))
    _sync(device)
    pipeline = steps * batch / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return model, {
        "train_img_per_s_model_step": model_only,
        "train_img_per_s_with_data": pipeline,
        "train_peak_mem_mib": peak,
    }


@torch.no_grad()
def inference_latency(model, device, size, batches, runs, warmup):
    model.eval()
    out = {}
    x32 = torch.randn(max(batches), 3, size, size, device=device)
    ref = model(x32).score.float()
    for precision in ("fp32", "fp16"):
        if precision == "fp16" and device.type != "cuda":
            continue
        m = model.half() if precision == "fp16" else model.float()
        for b in batches:
            x = x32[:b].to(torch.float16 if precision == "fp16" else torch.float32)
            for _ in range(warmup):
                m(x)
            _sync(device)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                m(x)
                _sync(device)
                times.append(time.perf_counter() - t0)
            out[f"{precision}_b{b}_ms_p50"] = 1000 * float(np.median(times))
            out[f"{precision}_b{b}_ms_p90"] = 1000 * float(np.percentile(times, 90))
        score = m(x32.to(next(m.parameters()).dtype)).score.float()
        out[f"{precision}_score_max_rel_err_vs_fp32"] = float(
            ((score - ref).abs() / ref.abs()).max()
        )
    model.float()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/gpu_throughput.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.backbones.split(","):
        model, row = train_throughput(
            name, device, args.image_size, args.batch_size, args.steps, args.warmup, True
        )
        row.update(
            inference_latency(model, device, args.image_size, (1, 8), args.runs, args.warmup)
        )
        row["backbone"] = name
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    print(
        f"{'backbone':18s} {'train img/s':>11s} {'w/ data':>8s} {'fp32 b1':>8s} {'fp32 b8':>8s} "
        f"{'fp16 b1':>8s} {'fp16 b8':>8s}"
    )
    for r in rows:
        print(
            f"{r['backbone']:18s} {r['train_img_per_s_model_step']:11.1f} "
            f"{r['train_img_per_s_with_data']:8.1f} "
            f"{r['fp32_b1_ms_p50']:8.2f} {r['fp32_b8_ms_p50']:8.2f} "
            f"{r.get('fp16_b1_ms_p50', float('nan')):8.2f} "
            f"{r.get('fp16_b8_ms_p50', float('nan')):8.2f}"
        )
    record = {
        "benchmark": "gpu_throughput",
        "args": vars(args),
        "rows": rows,
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "torch": str(torch.__version__),
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
    }
    write_result(args.out, record)


if __name__ == "__main__":
    main()
