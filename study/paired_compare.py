"""Paired differences between methods across `triattention eval` runs on the SAME text segment.

Every run streams the same tokens with the same full-cache reference, so per-token metrics of methods from
different runs pair token by token. Prints, per budget, each method's KL and its difference to the chosen
base method with the block-means standard error (64-token blocks).

    python study/paired_compare.py results/dev/*_per_token.pt --base triattention-online
"""
import argparse
import json
import os

import torch

from triattention_sampler.evaluation.metrics import paired_difference


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("per_token", nargs="+", help="*_per_token.pt files written by `triattention eval`")
    p.add_argument("--base", default="triattention-online")
    p.add_argument("--metric", default="kl", choices=["kl", "nll", "agree"])
    p.add_argument("--block", type=int, default=64)
    args = p.parse_args()
    runs, start, offsets = {}, None, set()
    for path in args.per_token:
        with open(path.replace("_per_token.pt", ".json")) as f:
            meta = json.load(f)
        offsets.add((meta["text"], meta.get("offset", 0), meta["tokens"]))
        start = meta["eval_start"] if start is None else start
        for label, metrics in torch.load(path).items():
            if "@" in label and args.metric in metrics:
                runs.setdefault(label, metrics[args.metric].float())
    if len(offsets) != 1:
        raise SystemExit(f"runs cover different text segments: {sorted(offsets)}")
    budgets = sorted({int(label.rsplit("@", 1)[1]) for label in runs})
    methods = list(dict.fromkeys(label.rsplit("@", 1)[0] for label in runs))
    print(f"{args.metric} over tokens {start}.. of {offsets.pop()}; difference to {args.base} ± SE")
    width = max(len(m) for m in methods)
    print(f"{'method':{width}s} " + " ".join(f"{'B=' + str(b):>26s}" for b in budgets))
    for m in methods:
        cells = []
        for b in budgets:
            x, base = runs.get(f"{m}@{b}"), runs.get(f"{args.base}@{b}")
            if x is None or base is None:
                cells.append(f"{'':>26s}")
                continue
            d = paired_difference(x, base, start, args.block)
            cells.append(f"{float(x[start:].mean()):.4f} {d['diff']:+.4f}±{d['se']:.4f}".rjust(26))
        print(f"{m:{width}s} " + " ".join(cells))


if __name__ == "__main__":
    main()
