#!/usr/bin/env python
"""Throughput of the compiled ops vs the pure-torch reference (prints figures; not a test).

Scoring: keys/s (kv-head keys scored per second, all layers) at 2k/8k/32k keys x 30 layers x 3 KV heads,
9 query heads, D=64, bf16 keys. Compaction: 30 layers x (K, V) caches kept to half. On CUDA the achieved DRAM
bandwidth is reported as a fraction of the GPU's peak (target for scoring at 32k keys: >= 60%).

Usage: python benchmarks/bench_kernels.py [--device cpu|cuda] [--dtype bfloat16] [--reps 5]
The CPU variant is built (or found up to date) with scripts/build_cpu_variant.py; on CUDA set LOCAL_KERNELS to a
kernel-builder build (or let get_kernel fetch the published one).
"""
import argparse
import importlib
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "triattention-community/triattention"
LAYERS, HKV, HQ, D = 30, 3, 9, 64
# Peak DRAM bandwidth, bytes/s, keyed by a substring of torch.cuda.get_device_name().
PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,  # SXM
    "A100": 2.0e12,
    "L40S": 0.864e12,
    "MI300X": 5.3e12,
}


def load_kernel(device: str):
    from kernels import get_kernel

    if device == "cpu" and "LOCAL_KERNELS" not in os.environ:
        spec = importlib.util.spec_from_file_location("build_cpu_variant", ROOT / "scripts" / "build_cpu_variant.py")
        builder = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(builder)
        variant = builder.build(ROOT / "build", builder.git_unique_id(), verbose=False)
        os.environ["LOCAL_KERNELS"] = f"{REPO_ID}={variant.parent}"
    kernel = get_kernel(REPO_ID, version=1)
    return kernel, importlib.import_module(kernel.__name__ + "._ops").ops


def timed(fn, device, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_bandwidth():
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BANDWIDTH.items():
        if key in name:
            return name, value
    return name, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    dev, dtype = args.device, getattr(torch, args.dtype)
    kernel, ops = load_kernel(dev)
    ref = kernel.reference_ops
    print(f"device={dev} threads={torch.get_num_threads()} dtype={args.dtype} layers={LAYERS} Hkv={HKV} Hq={HQ} D={D}")
    if dev == "cuda":
        gpu, peak = peak_bandwidth()
        print(f"gpu={gpu} peak={peak / 1e12 if peak else float('nan'):.2f} TB/s")
    gen = torch.Generator().manual_seed(0)
    trig = torch.randn(1, HQ, 1, D, generator=gen).to(dev)
    norm = torch.randn(1, HQ, D // 2, generator=gen).to(dev)
    print(f"{'op':<12}{'keys':>7}{'reference keys/s':>19}{'compiled keys/s':>18}{'speedup':>9}{'bandwidth':>12}")
    for n in (2048, 8192, 32768):
        keys = [torch.randn(1, HKV, n, D, generator=gen).to(dtype).to(dev) for _ in range(LAYERS)]
        outs = [torch.empty(1, HQ, n, device=dev) for _ in range(LAYERS)]

        def compiled():
            for k, o in zip(keys, outs):
                ops.score_keys(o, k, trig, norm, D, False)

        def reference():
            for k in keys:
                ref.score_keys(k, trig, norm, D, False)

        t_cmp, t_ref = timed(compiled, dev, args.reps), timed(reference, dev, args.reps)
        total = LAYERS * HKV * n
        moved = sum(k.numel() * k.element_size() for k in keys) + sum(o.numel() * 4 for o in outs)
        bw = f"{moved / t_cmp / 1e9:.0f} GB/s"
        if dev == "cuda" and peak:
            bw += f" ({moved / t_cmp / peak:.0%})"
        print(f"{'score_keys':<12}{n:>7}{total / t_ref:>19.3e}{total / t_cmp:>18.3e}{t_ref / t_cmp:>8.2f}x{bw:>12}")

    for n in (2048, 8192, 32768):
        caches = [torch.randn(1, HKV, n, D, generator=gen).to(dtype).to(dev) for _ in range(2 * LAYERS)]
        idx = torch.stack([torch.randperm(n, generator=gen)[: n // 2].sort().values for _ in range(HKV)])
        idx = idx.view(1, HKV, n // 2).to(dev)
        # Repeated compaction with the same indices is still valid (indices[j] >= j) and moves the same bytes.
        t_cmp = timed(lambda: ops.compact_(caches, idx), dev, args.reps)
        t_ref = timed(lambda: ref.compact_(caches, idx), dev, args.reps)
        rows = 2 * LAYERS * HKV * (n // 2)
        moved = 2 * rows * D * caches[0].element_size()
        bw = f"{moved / t_cmp / 1e9:.0f} GB/s"
        if dev == "cuda" and peak:
            bw += f" ({moved / t_cmp / peak:.0%})"
        print(f"{'compact_':<12}{n:>7}{rows / t_ref:>19.3e}{rows / t_cmp:>18.3e}{t_ref / t_cmp:>8.2f}x{bw:>12}")
    print("(compact_ figures are rows/s, K and V caches of all layers in one call)")


if __name__ == "__main__":
    main()
