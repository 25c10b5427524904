#!/usr/bin/env python
"""Throughput of the compiled ops vs the pure-torch reference (reference_ops) on the same device (not a test).

Shapes (Llama-3.1-8B-like: Hkv 8, Hq 32, D 128, bf16 keys):
  score_keys   B 1 N 4K/32K/131K and B 8 N 32K, rotary_dim 128, half pairing; bytes = keys read + fp32 out written
  zscore       the same (B, N): scores [B, 32, N] -> [B, 8, N];  bytes = scores + candidates read + out written
  select_topk  8 and 64 rows, N 2K .. 128K, k = min(2048, N);     bytes = scores read
  compact_     K and V [B, 8, 2176, 128] bf16 kept to 2048 sorted random slots, B 1 and 8;
               bytes = 2 (K, V) * 2 (read + write) * B * H * K * D * 2
CUDA: CUDA events, median of --reps calls after warm-up, L2 flushed before each call (--flush read: inputs from DRAM,
no dirty lines left to write back; score_keys and compact_ rows also give ms_write_flush, the sessions 1-2 method,
for comparison, and copy_ms, a device copy of the same bytes); GB/s and % of the HBM peak
(from the device name: H200 4.8, H100 3.35, A100 2.0 TB/s; else the measured device-to-device copy bandwidth).
CPU: wall clock, median, and smaller shapes unless --full.

--tune S (repeatable, CUDA): score_keys and compact_ again under TRIATTENTION_CUDA_TUNE=S for each S (launch shapes,
kernel_src/triattention_cuda/tuning.h), next to the built-in choice, so one GPU run compares them.

Usage: python benchmarks/bench_kernels.py [--device cpu|cuda] [--reps N] [--json PATH] [--quick] [--full]
       [--flush read|write|none] [--tune S]...
The CPU variant is built (or found up to date) with scripts/build_cpu_variant.py; on CUDA set LOCAL_KERNELS (or
TRIATTENTION_VARIANT_DIR) to a build of scripts/build_cuda_variant.py.
"""
import argparse
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "triattention-community/triattention"
HKV, HQ, D = 8, 32, 128
# Peak DRAM bandwidth, bytes/s, by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_BANDWIDTH = [("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("A100", 2.0e12)]

SHAPES = {  # (score/zscore (B, N) list, top-k rows, top-k N list, compact B list)
    "full": ([(1, 4096), (1, 32768), (1, 131072), (8, 32768)], (8, 64),
             [2048, 4096, 8192, 16384, 32768, 65536, 131072], (1, 8)),
    "cpu": ([(1, 4096), (1, 32768), (8, 4096)], (8, 64), [2048, 8192, 32768], (1, 8)),
    "quick": ([(1, 1024), (2, 2048)], (8,), [2048, 4096], (1,)),
}


def load_kernel(device: str):
    from kernels import get_kernel

    if "LOCAL_KERNELS" not in os.environ and os.environ.get("TRIATTENTION_VARIANT_DIR"):
        os.environ["LOCAL_KERNELS"] = f"{REPO_ID}={Path(os.environ['TRIATTENTION_VARIANT_DIR']).resolve().parent}"
    if device == "cpu" and "LOCAL_KERNELS" not in os.environ:
        spec = importlib.util.spec_from_file_location("build_cpu_variant", ROOT / "scripts" / "build_cpu_variant.py")
        builder = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(builder)
        variant = builder.build(ROOT / "build", builder.git_unique_id(), verbose=False)
        os.environ["LOCAL_KERNELS"] = f"{REPO_ID}={variant.parent}"
    kernel = get_kernel(REPO_ID, version=1, backend=device)
    return kernel, importlib.import_module(kernel.__name__ + "._ops").ops


class Timer:
    """Median op time. CUDA flushes L2 before each call with a scratch buffer larger than any L2 (H200: 50 MB):
    "read" (default) reads it, so the inputs come from DRAM and L2 holds only clean lines; "write" rewrites it, as
    sessions 1-2 did, which leaves up to an L2 of dirty lines that the timed op pays to write back (a fixed cost of
    up to ~10 us at 4.8 TB/s, charged to whatever runs next); "none" keeps L2 warm."""

    def __init__(self, device: str, reps: int, flush: str):
        self.device, self.reps, self.flush = device, reps, flush
        self.scratch = None
        if flush != "none" and device == "cuda":
            self.scratch = torch.zeros(256 * 2**20 // 8, dtype=torch.int64, device=device)

    def _flush(self, mode: str) -> None:
        if self.scratch is None or mode == "none":
            return
        if mode == "write":
            self.scratch.zero_()
        else:
            self.sink = self.scratch.sum()  # a read-only pass; the previous call's dirty lines are written back here

    def ms(self, fn, flush: str = None) -> float:
        mode = flush or self.flush
        fn()
        times = []
        if self.device == "cuda":
            fn()
            torch.cuda.synchronize()
            for _ in range(self.reps):
                self._flush(mode)  # queued ahead of the start event, so it also hides the host's launch overhead
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(self.reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def copy_ms(timer: Timer, nbytes: int) -> float:
    """Time of a device-to-device copy that moves `nbytes` in all (half read, half written)."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return timer.ms(lambda: dst.copy_(src))


def peak_bandwidth(timer: Timer) -> dict:
    """Spec peak from the device name, and the measured device-to-device copy bandwidth (read + write)."""
    name = torch.cuda.get_device_name()
    nbytes = 2 * 2**30
    copy = nbytes / (copy_ms(timer, nbytes) / 1e3)
    spec = next((v for k, v in PEAK_BANDWIDTH if k in name), None)
    return {"gpu": name, "peak_GBps": round((spec or copy) / 1e9, 1), "peak_source": "spec" if spec else "copy",
            "copy_GBps": round(copy / 1e9, 1)}


def row(op, shape, ms, ref_ms, nbytes, peak):
    r = {"op": op, **shape, "ms": round(ms, 4), "ref_ms": round(ref_ms, 4), "speedup": round(ref_ms / ms, 2),
         "GBps": round(nbytes / (ms / 1e3) / 1e9, 1)}
    if peak:
        r["pct_hbm"] = round(100 * nbytes / (ms / 1e3) / peak, 1)
    shape_s = " ".join(f"{k}={v}" for k, v in shape.items())
    pct = f" {r['pct_hbm']:5.1f}%" if peak else ""
    print(f"{op:<12} {shape_s:<24} {ms:9.4f} ms  ref {ref_ms:9.4f} ms  {r['speedup']:6.2f}x  "
          f"{r['GBps']:8.1f} GB/s{pct}", flush=True)
    return r


def score_inputs(b, n, gen, dev):
    """keys [b, 8, n, 128] bf16, trig and norm weights of 32 query heads, and the fp32 output."""
    keys = torch.randn(b, HKV, n, D, generator=gen).to(torch.bfloat16).to(dev)
    trig = torch.randn(b, HQ, 1, D, generator=gen).to(dev)
    norm = torch.randn(b, HQ, D // 2, generator=gen).to(dev)
    return keys, trig, norm, torch.empty(b, HQ, n, device=dev)


COMPACT_C, COMPACT_K = 2176, 2048


def compact_inputs(b, gen, dev):
    """K and V [b, 8, 2176, 128] bf16 and 2048 sorted random slots per (b, h)."""
    c, k = COMPACT_C, COMPACT_K
    caches = [torch.randn(b, HKV, c, D, generator=gen).to(torch.bfloat16).to(dev) for _ in range(2)]
    idx = torch.stack([torch.randperm(c, generator=gen)[:k].sort().values for _ in range(b * HKV)])
    return caches, idx.view(b, HKV, k).to(dev)


def sweep(ops, timer, settings, peak, score_shapes, compact_bs, gen, dev, rows: list, save) -> None:
    """score_keys and compact_ under each TRIATTENTION_CUDA_TUNE setting of their own ("score_*", "compact_*"; "" = the
    built-in launch shapes), each setting's output also compared bit for bit with the built-in one's ("same"), so a
    winner is known correct. Rows go into `rows` and are saved one by one: a setting that kills the process (a
    device-side trap) leaves the figures before it."""
    old = os.environ.get("TRIATTENTION_CUDA_TUNE")
    cases = []  # (op, shape, bytes, timed call, fresh output of one call)
    for b, n in score_shapes:
        keys, trig, norm, scores = score_inputs(b, n, gen, dev)
        nbytes = keys.numel() * keys.element_size() + scores.numel() * 4

        def scored(a=(keys, trig, norm)):
            out = torch.full((a[0].shape[0], HQ, a[0].shape[2]), float("nan"), device=dev)
            ops.score_keys(out, *a, D, False)
            return out
        cases.append(("score_keys", {"B": b, "N": n}, nbytes,
                      lambda a=(scores, keys, trig, norm): ops.score_keys(*a, D, False), scored))
    for b in compact_bs:
        caches, idx = compact_inputs(b, gen, dev)

        def compacted(a=([c.clone() for c in caches], idx)):  # from a pristine copy: timed calls change `caches`
            fresh = [c.clone() for c in a[0]]
            ops.compact_(fresh, a[1])
            return torch.stack(fresh)
        cases.append(("compact_", {"B": b, "K": COMPACT_K}, 2 * 2 * b * HKV * COMPACT_K * D * 2,
                      lambda a=(caches, idx): ops.compact_(*a), compacted))
    expected = {}  # case number -> the built-in launch's output
    try:
        # Setting by setting over every shape, so a setting that kills the process (last in BENCH_TUNE: the newest
        # paths) loses only its own rows and the ones after it.
        for setting in [""] + list(settings):
            for i, (op, shape, nbytes, fn, output) in enumerate(cases):
                prefix = op.rstrip("_").split("_")[0] + "_"  # score_keys: score_*, compact_: compact_*
                if not all(k.startswith(prefix) for k in setting.split(",") if k):
                    continue
                os.environ["TRIATTENTION_CUDA_TUNE"] = setting
                got = output()
                expected.setdefault(i, got)
                ms = timer.ms(fn)
                r = {"op": op, **shape, "tune": setting or "built-in", "ms": round(ms, 4),
                     "GBps": round(nbytes / (ms / 1e3) / 1e9, 1), "same": bool(torch.equal(got, expected[i]))}
                if peak:
                    r["pct_hbm"] = round(100 * nbytes / (ms / 1e3) / peak, 1)
                print(f"tune {op:<11} {str(shape):<22} {r['tune']:<40} {ms:9.4f} ms {r['GBps']:8.1f} GB/s"
                      + (f" {r['pct_hbm']:5.1f}%" if peak else "") + ("" if r["same"] else "  OUTPUT DIFFERS"),
                      flush=True)
                rows.append(r)
                save()
    finally:
        if old is None:
            os.environ.pop("TRIATTENTION_CUDA_TUNE", None)
        else:
            os.environ["TRIATTENTION_CUDA_TUNE"] = old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per op (default: 20 cuda, 3 cpu)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (checks the script, not the speed)")
    parser.add_argument("--full", action="store_true", help="the CUDA shapes on the CPU too")
    parser.add_argument("--flush", choices=("read", "write", "none"), default="read",
                        help="how L2 is flushed before each timed CUDA call (see Timer)")
    parser.add_argument("--tune", action="append", default=[],
                        help="a TRIATTENTION_CUDA_TUNE setting to compare (repeatable; CUDA launch shapes)")
    args = parser.parse_args()
    dev = args.device
    reps = args.reps or (20 if dev == "cuda" else 3)
    shapes = "quick" if args.quick else ("full" if dev == "cuda" or args.full else "cpu")
    kernel, ops = load_kernel(dev)
    ref = kernel.reference_ops
    timer = Timer(dev, reps, args.flush)
    info = {"device": dev, "torch": torch.__version__, "variant": str(Path(kernel.__file__).parent), "reps": reps,
            "shapes": shapes, "l2_flush": args.flush if timer.scratch is not None else "none",
            "threads": torch.get_num_threads()}
    if dev == "cuda":
        info.update(peak_bandwidth(timer))
    peak = info.get("peak_GBps", 0) * 1e9 or None
    print(json.dumps(info), flush=True)
    results = {"score_keys": [], "zscore": [], "select_topk": [], "compact": []}
    out = {**info, "results": results}

    def save():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1) + "\n")

    score_shapes, topk_rows, topk_ns, compact_bs = SHAPES[shapes]
    gen = torch.Generator().manual_seed(0)
    def with_references(r, fn, nbytes):
        """Next to a bandwidth-bound op's figure: the sessions 1-2 one (dirty L2 before the call), and a device copy
        moving the same bytes (half read, half written), the rate a trivial kernel reaches at this size with its
        launch and ramp-up, so a shortfall from the HBM target reads as the op's or the size's."""
        if timer.scratch is not None and timer.flush != "write":
            r["ms_write_flush"] = round(timer.ms(fn, "write"), 4)
        if dev == "cuda":
            r["copy_ms"] = round(copy_ms(timer, nbytes), 4)
        return r

    for b, n in score_shapes:
        keys, trig, norm, scores = score_inputs(b, n, gen, dev)
        fn = lambda: ops.score_keys(scores, keys, trig, norm, D, False)  # noqa: E731
        ms = timer.ms(fn)
        ref_ms = timer.ms(lambda: ref.score_keys(keys, trig, norm, D, False))
        nbytes = keys.numel() * keys.element_size() + scores.numel() * 4
        r = row("score_keys", {"B": b, "N": n}, ms, ref_ms, nbytes, peak)
        results["score_keys"].append(with_references(r, fn, nbytes))
        cand = (torch.rand(b, n, generator=gen) < 0.9).to(dev)
        zout = torch.empty(b, HKV, n, device=dev)
        ms = timer.ms(lambda: ops.zscore_group_reduce(zout, scores, cand, HQ // HKV, True))
        ref_ms = timer.ms(lambda: ref.zscore_group_reduce(scores, cand, HQ // HKV, True))
        nbytes = scores.numel() * 4 + cand.numel() + zout.numel() * 4
        results["zscore"].append(row("zscore", {"B": b, "N": n}, ms, ref_ms, nbytes, peak))
        save()
        del keys, scores, zout
    for rows in topk_rows:
        for n in topk_ns:
            k = min(2048, n)
            scores = torch.randn(rows, n, generator=gen).to(dev)
            idx = torch.empty(rows, k, dtype=torch.int64, device=dev)
            ms = timer.ms(lambda: ops.select_topk(idx, scores, k))
            ref_ms = timer.ms(lambda: ref.select_topk(scores, k))
            results["select_topk"].append(row("select_topk", {"rows": rows, "N": n, "k": k}, ms, ref_ms,
                                              scores.numel() * 4, peak))
        save()
    c, k = COMPACT_C, COMPACT_K
    for b in compact_bs:
        caches, idx = compact_inputs(b, gen, dev)
        # Compacting again with the same indices is still valid (indices[j] >= j) and moves the same bytes.
        fn = lambda: ops.compact_(caches, idx)  # noqa: E731
        ms = timer.ms(fn)
        ref_ms = timer.ms(lambda: ref.compact_(caches, idx))
        nbytes = 2 * 2 * b * HKV * k * D * 2
        r = row("compact_", {"B": b, "H": HKV, "C": c, "K": k}, ms, ref_ms, nbytes, peak)
        results["compact"].append(with_references(r, fn, nbytes))
        save()
    if args.tune:
        tune_shapes = [s for s in score_shapes if s[1] >= 32768] or score_shapes
        out["tuning"] = []
        sweep(ops, timer, args.tune, peak, tune_shapes, compact_bs, gen, dev, out["tuning"], save)
    save()


if __name__ == "__main__":
    sys.exit(main())
