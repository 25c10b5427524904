"""Matplotlib PNGs from the JSON results: quality vs budget per method; KV bytes and tokens/s vs length."""
import json
import os
from typing import List

from ..scorers.registry import REFERENCE


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality(result: dict, out_dir: str) -> List[str]:
    plt = _plt()
    rows = result["rows"]
    methods = sorted({r["method"] for r in rows if r["method"] != REFERENCE}, key=lambda m: (m.startswith("tri-"), m))
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for metric, ax, label in (("kl", axes[0], "KL(full || compressed), nats/token"),
                              ("top1", axes[1], "top-1 agreement with full cache"),
                              ("nll", axes[2], "NLL, nats/token")):
        for m in methods:
            pts = sorted((r["budget"], r[metric]) for r in rows if r["method"] == m)
            style = "-" if not m.startswith("tri-") else ":"
            lw = 2.5 if m.startswith("triattention") else 1.3
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", lw=lw, label=m)
        if metric == "nll" and "nll_ref" in rows[0]:
            ax.axhline(rows[0]["nll_ref"], color="k", lw=1, ls="--", label="full cache")
        ax.set_xscale("log", base=2)
        if metric == "kl":
            ax.set_yscale("log")
        ax.set_xlabel("KV budget (tokens)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result.get('model', '')}: {result.get('text', '')}, {result.get('tokens', '')} tokens "
                 f"(metrics over positions >= {result.get('eval_start', 0)})", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "quality_vs_budget.png")
    fig.savefig(path, dpi=110)
    paths.append(path)
    return paths


def plot_bench(result: dict, out_dir: str) -> List[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in result["runs"]:
        xs = [r["logical_length"] for r in run["rows"]]
        axes[0].plot(xs, [r["kv_bytes_used"] / 2 ** 20 for r in run["rows"]], marker=".", label=run["label"])
        axes[1].plot(xs, [r["tokens_per_s"] for r in run["rows"]], marker=".", label=run["label"])
    axes[0].set_ylabel("physical KV MiB (used slots)")
    axes[1].set_ylabel("decode tokens/s")
    for ax in axes:
        ax.set_xlabel("sequence length (tokens)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result.get('model', '')} on {result.get('device', 'cpu')}", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "bench_vs_length.png")
    fig.savefig(path, dpi=110)
    return [path]


def plot_file(path: str, out_dir: str) -> List[str]:
    with open(path) as f:
        result = json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    if result.get("kind") == "quality":
        return plot_quality(result, out_dir)
    if result.get("kind") == "bench":
        return plot_bench(result, out_dir)
    raise ValueError(f"{path} is not a quality or bench result (no 'kind')")
