"""PyTorch reference for `cargo bench -p idlevit-benches --bench train`: images/s of one
AdamW training step (forward, cross entropy with label smoothing 0.1, backward, step) of a
DeiT-T-sized timm ViT on 64x64 images, patch 8, batch 32, eval-free (no dropout/drop path).

Run by hand, never by CI. Versions it was run with: torch 2.15.0, timm 1.0.31.
Usage: python benches/python/train_throughput.py [--threads 2] [--runs 10]
"""
import argparse, statistics, time
import torch, timm
from timm.models.vision_transformer import VisionTransformer

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = VisionTransformer(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3,
                              mlp_ratio=4.0, num_classes=10, qkv_bias=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
    x = torch.randn(a.batch, 3, 64, 64)
    y = torch.arange(a.batch) % 10
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
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
    print(f"| torch eager | deit_tiny 64px train step | {a.batch} | {a.batch / med:.2f} images/s |")

if __name__ == "__main__":
    main()
