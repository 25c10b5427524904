"""Keys scored per second on this machine: seed-API path (RoPE inversion + per-offset trig) vs the
post-RoPE fast path, at 2k/8k/32k keys x 30 layers x 3 KV heads (9 query heads), head_dim 64.

    .venv/bin/python benchmarks/bench_scoring.py [--keys 2048 8192 32768] [--dtype bfloat16]
"""
import argparse
import time

import torch

import triattention as ta

LAYERS, HKV, HQ, D = 30, 3, 9, 64


def timeit(fn, repeat=3):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed-layers", type=int, default=1, help="layers timed for the (slow) seed path")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    freq = D // 2
    omega = 1.0 / (100000 ** (torch.arange(freq, dtype=torch.float32) * 2 / D))
    offsets = ta.build_geometric_offsets(65536, torch.device("cpu"))
    s2 = torch.ones(freq)
    qr, qi = torch.randn(LAYERS, HQ, freq), torch.randn(LAYERS, HQ, freq)
    qa = torch.sqrt(qr ** 2 + qi ** 2) + 0.1
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cache dtype {args.dtype}, "
          f"backend {ta.backend_name()}")
    print(f"{'keys':>6} {'path':>10} {'seconds/round':>14} {'keys/s (all layers, heads)':>28}")
    for n in args.keys:
        keys = [torch.randn(1, HKV, n, D).to(dtype) for _ in range(LAYERS)]
        pos = torch.arange(n)

        def fast():
            for layer in range(LAYERS):
                w, c = ta.round_weights(qr[layer], qi[layer], qa[layer], omega, n, offsets, head_dim=D)
                ta.score_post_rope_keys(keys[layer], w, c)

        def seed():
            cos = torch.cat([pos[:, None] * omega] * 2, -1).cos()
            sin = torch.cat([pos[:, None] * omega] * 2, -1).sin()
            for layer in range(args.seed_layers):
                for kv in range(HKV):
                    k_unrot = ta.invert_rope(keys[layer][0, kv].float(), cos, sin, 1.0)
                    for h in range(HQ // HKV):
                        hh = kv * (HQ // HKV) + h
                        amp, phi, extra = ta.compute_frequency_statistics_from_means(
                            torch.complex(qr[layer, hh], qi[layer, hh]), qa[layer, hh], k_unrot)
                        ta.score_keys_for_round(pos, n, amp, phi, omega, extra, offsets, "mean", s2)

        total_keys = n * LAYERS * HKV
        t_fast = timeit(fast)
        t_seed = timeit(seed, repeat=1) * LAYERS / args.seed_layers
        print(f"{n:>6} {'seed':>10} {t_seed:>14.4f} {total_keys / t_seed:>28,.0f}")
        print(f"{n:>6} {'fast':>10} {t_fast:>14.4f} {total_keys / t_fast:>28,.0f}")


if __name__ == "__main__":
    main()
