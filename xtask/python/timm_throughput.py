"""timm DeiT throughput on this CPU, for `cargo xtask repro` when IDLEVIT_PYTHON is set.

Usage: python timm_throughput.py --models deit_small,deit_tiny --batches 1,32 --runs 3
    [--threads N] [--dtype fp32|bf16]
Prints one JSON object per line: {"model": name, "batch": b, "dtype": d, "images_per_second":
x}, the median over --runs timed passes after one warm-up (PyTorch eager, inference mode;
bf16 under CPU autocast, which runs the products on AMX tiles where the CPU has them).
Pinned: torch 2.15.0, timm 1.0.31 (other versions still run; the report names them).
"""

import argparse
import contextlib
import json
import statistics
import sys
import time

import timm
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--batches", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(json.dumps({"torch": torch.__version__, "timm": timm.__version__}), flush=True)
    for name in args.models.split(","):
        model = timm.create_model(f"{name}_patch16_224", pretrained=False).eval()
        for batch in map(int, args.batches.split(",")):
            x = torch.randn(batch, 3, 224, 224)
            precision = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if args.dtype == "bf16"
                else contextlib.nullcontext()
            )
            with torch.inference_mode(), precision:
                model(x)
                times = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    model(x)
                    times.append(time.perf_counter() - start)
            ips = batch / statistics.median(times)
            row = {"model": name, "batch": batch, "dtype": args.dtype, "images_per_second": ips}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
