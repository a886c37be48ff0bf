"""PyTorch's f32 GEMM at DeiT-S's projection shapes, as a ceiling for
`cargo bench -p idlevit-benches --bench gemm`: GFLOP/s of `torch.nn.functional.linear`
(x [M, K] times a (N, K) weight, with bias) for batch 1 and 32 (M = 197 * batch).

Run by hand, never by CI. Versions it was run with: torch 2.15.0 (its bundled oneDNN/MKL).
Usage: python benches/python/gemm_throughput.py [--threads 2] [--repeats 30]
"""
import argparse, statistics, time
import torch

SHAPES = [("qkv", 384, 1152), ("proj", 384, 384), ("fc1", 384, 1536), ("fc2", 1536, 384)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {a.threads} threads, median of {a.repeats} calls")
    for batch in (1, 32):
        m = 197 * batch
        for name, k, n in SHAPES:
            x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
            for _ in range(3):
                torch.nn.functional.linear(x, w, b)
            times = []
            with torch.no_grad():
                for _ in range(a.repeats):
                    t0 = time.perf_counter()
                    torch.nn.functional.linear(x, w, b)
                    times.append(time.perf_counter() - t0)
            gflops = 2 * m * k * n / statistics.median(times) / 1e9
            print(f"{name:5} {m:5} x {k:4} x {n:4}: {gflops:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
