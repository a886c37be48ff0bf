"""PyTorch references for `cargo bench -p idlevit-benches --bench train`: images/s of one
AdamW training step (forward, loss, backward, step), eval-free (no dropout / drop path).

Shapes (`--shape`):
- `tiny64` (default): a DeiT-T-sized timm ViT on 64x64 images, patch 8, batch 32, cross
  entropy with label smoothing 0.1.
- `small224`: DeiT-S on 224x224 images, batch 16. `--form dense` trains the timm model with
  label-smoothed cross entropy; `--form idle` trains the masked form of IdleViT at r = 0.7
  (DeiT's layers 4..11) with the cut loss (weight 20) and distillation (weight 5) from a
  dense teacher, written out in `fixtures/loss_reference.py`.

Run by hand, never by CI. Versions it was run with: torch 2.15.0, timm 1.0.31.
Usage: python benches/python/train_throughput.py [--shape tiny64|small224]
       [--form dense|idle] [--threads 2] [--runs 10]
"""
import argparse
import copy
import os
import statistics
import sys
import time

import torch
import timm
from timm.models.vision_transformer import VisionTransformer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "fixtures"))
import idle_reference as idle_ref  # noqa: E402
import loss_reference as loss_ref  # noqa: E402

SHAPES = {
    "tiny64": dict(model=dict(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3,
                              mlp_ratio=4.0, num_classes=10, qkv_bias=True), batch=32),
    "small224": dict(model=dict(img_size=224, patch_size=16, embed_dim=384, depth=12,
                                num_heads=6, mlp_ratio=4.0, num_classes=1000, qkv_bias=True),
                     batch=16),
}
IDLE_LAYERS, IDLE_POWERS = list(range(4, 12)), [1, 1, 1, 2, 2, 2, 3, 3]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny64")
    p.add_argument("--form", choices=["dense", "idle"], default="dense")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--batch", type=int)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shape = SHAPES[a.shape]
    batch = a.batch or shape["batch"]
    cfg = shape["model"]
    model = VisionTransformer(**cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
    x = torch.randn(batch, 3, cfg["img_size"], cfg["img_size"])
    y = torch.arange(batch) % cfg["num_classes"]
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    ratios = idle_ref.stage_ratios(0.7, IDLE_POWERS)

    def loss():
        if a.form == "dense":
            return loss_fn(model(x), y)
        terms, _ = loss_ref.objective(model, teacher, x, IDLE_LAYERS, ratios, labels=y,
                                      smoothing=0.1, cut_weight=20.0, distill_weight=5.0)
        return terms["total"]

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"torch {torch.__version__} timm {timm.__version__} threads {a.threads}")
    print(f"| torch eager | {a.shape} {a.form} train step | {batch} | "
          f"{batch / med:.2f} images/s |")


if __name__ == "__main__":
    main()
