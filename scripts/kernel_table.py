#!/usr/bin/env python
"""The README's kernel table from a bench_kernels.json (benchmarks/bench_kernels.py --json), so figures go from a GPU
run into the README without retyping: one markdown row per op and shape family (the sizes of N joined by " / "),
time, GB/s (% of HBM), speedup over the pure-torch path, and where measured the old-flush time and a device copy
of the same bytes (the rate a trivial kernel reaches at that size). With a --tune sweep in the file, a second table:
per op and shape the built-in launch against the fastest setting whose output is identical, and the setting
gpu_check's rule adopts (so an adopted setting's figures need no second run: making it built-in runs the same code).

Usage: python scripts/kernel_table.py docs/gpu/session3/bench_kernels.json
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_findings import fastest_settings  # noqa: E402

OPS = {"score_keys": "`score_keys`", "zscore": "`zscore_group_reduce`", "select_topk": "`select_topk`, k 2048",
       "compact": "`compact_`, K and V 2176 → 2048"}


def size(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def family(r: dict) -> str:
    if "rows" in r:
        return f"{r['rows']} rows"
    return f"B {r['B']}"


def copy_cell(r: dict) -> str:
    """A device copy of the op's bytes: its time and, like the op's, % of HBM (same bytes, so scaled by the times)."""
    pct = f" ({r['pct_hbm'] * r['ms'] / r['copy_ms']:.0f} %)" if "pct_hbm" in r else ""
    return f"{r['copy_ms'] * 1e3:.1f} µs{pct}"


def rows(results: dict) -> list:
    lines = []
    for op, label in OPS.items():
        groups = {}
        for r in results.get(op, []):
            groups.setdefault(family(r), []).append(r)
        for fam, rs in groups.items():
            ns = " / ".join(size(r["N"]) for r in rs if "N" in r)
            shape = f"{fam}, N {ns}" if ns else fam
            time = " / ".join(f"{r['ms'] * 1e3:.1f}" for r in rs) + " µs"
            bw = " / ".join(f"{r['GBps']:.0f} ({r['pct_hbm']:.0f} %)" if "pct_hbm" in r else f"{r['GBps']:.0f}"
                            for r in rs)
            speed = " / ".join(f"{r['speedup']:.1f}x" for r in rs)
            old = " / ".join(f"{r['ms_write_flush'] * 1e3:.1f}" for r in rs if "ms_write_flush" in r)
            copy = " / ".join(copy_cell(r) for r in rs if "copy_ms" in r)
            lines.append(f"| {label} | {shape} | {time} | {bw} | {speed} | {old + ' µs' if old else ''} | {copy} |")
    return lines


def sweep_rows(tuning: list) -> list:
    """The second table's rows from bench_kernels.json's "tuning" list."""
    found = fastest_settings(tuning)
    adopt = {op: a["tune"] for op, a in found["adopt"].items()}
    lines = []
    for best in found["per_shape"]:
        op = best["op"]
        shape = ", ".join(f"{k} {size(v) if k == 'N' else v}" for k, v in best.items()
                          if k in ("B", "N", "K"))

        def at(tune):  # this shape's row of a setting
            return next((r for r in tuning if r["op"] == op and r["tune"] == tune
                         and all(r.get(k) == best.get(k) for k in ("B", "N", "K"))), None)
        builtin, chosen = at("built-in"), adopt.get(op)
        adopted = at(chosen)

        def cell(r):
            pct = f" ({r['pct_hbm']:.0f} %)" if r.get("pct_hbm") is not None else ""
            return f"{r['ms'] * 1e3:.1f} µs{pct}"
        lines.append(f"| `{op}` | {shape} | {cell(builtin)} | `{best['tune']}`: {cell(best)} | "
                     + (f"`{chosen}`: {cell(adopted)}" if adopted else "none") + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a bench_kernels.json")
    args = parser.parse_args()
    try:
        data = json.loads(args.json.read_text())
    except (OSError, ValueError) as err:
        print(f"kernel_table: cannot read {args.json}: {err}", file=sys.stderr)
        return 2
    if "results" not in data:
        print(f"kernel_table: {args.json} has no 'results' (write it with bench_kernels.py --json)", file=sys.stderr)
        return 2
    print(f"{data.get('gpu', data.get('device'))}, torch {data.get('torch')}, L2 flush {data.get('l2_flush')}, "
          f"median of {data.get('reps')}; % of {data.get('peak_GBps')} GB/s")
    print()
    print("| op | shape | time | GB/s (% of HBM) | vs torch | time with the old (write) flush "
          "| a copy of the same bytes |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows(data["results"])))
    if data.get("tuning"):
        print()
        print("| op | shape | built-in launch | fastest identical setting | adopted (gpu_check's rule) |")
        print("|---|---|---|---|---|")
        print("\n".join(sweep_rows(data["tuning"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
