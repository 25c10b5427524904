"""Markdown tables + one plot from `triattention eval` quality JSONs (one per text), for the README.

    python study/quality_report.py results/q_essays.json results/q_hamlet.json \
        --label "triattention-online[...]=TriAttention (recommended)" --plot results/quality_two_texts.png

Per text: KL(full || compressed) with the paired difference to StreamingLLM and its standard error (block
means over 64-token blocks, computed by the eval), top-1 agreement and NLL at every budget; then the scoring
cost of one round per method (measured on the machine that ran the eval, and the analytic bytes / FLOPs).
"""
import argparse
import json
import os


def load(path):
    with open(path) as f:
        result = json.load(f)
    if result.get("kind") != "quality":
        raise SystemExit(f"{path} is not a quality result")
    return result


def text_name(result):
    offset = result.get("offset", 0)
    return f"{result['text']} (tokens {offset}..{offset + result['tokens']})"


def tables(result, labels, order):
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    budgets = result["budgets"]
    methods = [m for m in order if any((m, b) in rows for b in budgets)] or result["methods"]
    best = {b: min(rows[m, b]["kl"] for m in methods if (m, b) in rows) for b in budgets}
    out = [f"**{text_name(result)}** — KL(full ‖ compressed) nats/token, and in brackets the paired difference to "
           "StreamingLLM ± its standard error (negative = better than StreamingLLM); bold = lowest KL",
           "", "| method | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for m in methods:
        cells = []
        for b in budgets:
            r = rows.get((m, b))
            if r is None:
                cells.append("")
                continue
            kl = f"**{r['kl']:.4f}**" if r["kl"] == best[b] else f"{r['kl']:.4f}"
            if "dkl_vs_streamingllm" in r:
                kl += f" ({r['dkl_vs_streamingllm']:+.4f} ± {r['dkl_vs_streamingllm_se']:.4f})"
            cells.append(kl)
        out.append(f"| {labels.get(m, m)} | " + " | ".join(cells) + " |")
    out += ["", f"top-1 agreement / NLL (full-cache NLL {result['rows'][0]['nll_ref']:.4f})", "",
            "| method | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for m in methods:
        cells = [f"{100 * rows[m, b]['top1']:.1f}% / {rows[m, b]['nll']:.3f}" if (m, b) in rows else ""
                 for b in budgets]
        out.append(f"| {labels.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def versus_table(result, path, labels, order, versus):
    """Paired KL difference of each TriAttention method to ``versus`` (from the per-token file)."""
    import torch

    from triattention_sampler.evaluation.metrics import paired_difference

    per_token = torch.load(path.replace(".json", "_per_token.pt"))
    budgets, start = result["budgets"], result["eval_start"]
    methods = [m for m in (order or result["methods"]) if m.startswith("tri") and f"{m}@{budgets[0]}" in per_token]
    out = [f"KL difference to {labels.get(versus, versus)} ± paired SE (negative = TriAttention better)", "",
           "| method | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for m in methods:
        cells = []
        for b in budgets:
            d = paired_difference(per_token[f"{m}@{b}"]["kl"].float(), per_token[f"{versus}@{b}"]["kl"].float(),
                                  start, result["interval"])
            cells.append(f"{d['diff']:+.4f} ± {d['se']:.4f}")
        out.append(f"| {labels.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def cost_table(result, labels, order):
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    budgets = result["budgets"]
    methods = [m for m in order if (m, budgets[-1]) in rows] or result["methods"]
    out = ["| method | scored layers | " + " | ".join(f"ms/round B={b}" for b in budgets)
           + f" | KiB read/round B={budgets[-1]} | MFLOP/round B={budgets[-1]} |",
           "|---" * (len(budgets) + 4) + "|"]
    for m in methods:
        r = rows[m, budgets[-1]]
        ms = [f"{rows[m, b].get('score_ms_per_round', float('nan')):.1f}" for b in budgets]
        out.append(f"| {labels.get(m, m)} | {r.get('scored_layers', '')} | " + " | ".join(ms)
                   + f" | {r.get('score_kib_per_round', float('nan')):.0f} | {r.get('score_mflop_per_round', float('nan')):.1f} |")
    return "\n".join(out)


def plot(results, labels, order, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4.0 * len(results)), squeeze=False)
    for row, result in zip(axes, results):
        rows = result["rows"]
        methods = [m for m in order if any(r["method"] == m for r in rows)] or result["methods"]
        sllm = {r["budget"]: r["kl"] for r in rows if r["method"] == "streamingllm"}
        kl_title = "KL / KL of StreamingLLM (lower is better)" if sllm else "KL(full || compressed), nats/token"
        for metric, ax, title in (("kl", row[0], kl_title),
                                  ("top1", row[1], "top-1 agreement with full cache"),
                                  ("nll", row[2], "NLL, nats/token")):
            for m in methods:
                pts = sorted((r["budget"], r[metric], r.get("dkl_vs_streamingllm_se", 0.0)) for r in rows
                             if r["method"] == m)
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                lw = 2.6 if "recommended" in labels.get(m, m) else 1.4
                if metric == "kl" and sllm:  # ratio to StreamingLLM; error bar = paired SE of the difference, same scale
                    ax.errorbar(xs, [y / sllm[x] for x, y in zip(xs, ys)],
                                yerr=[p[2] / sllm[p[0]] for p in pts], marker="o", lw=lw, capsize=3,
                                label=labels.get(m, m))
                else:
                    ax.plot(xs, ys, marker="o", lw=lw, label=labels.get(m, m))
            if metric == "nll":
                ax.axhline(rows[0]["nll_ref"], color="k", lw=1, ls="--", label="full cache")
            ax.set_xscale("log", base=2)
            if metric == "kl":
                ax.set_yscale("log")
                if sllm:
                    ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xlabel("KV budget (tokens)")
            ax.set_title(f"{text_name(result)}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="lower right")
    fig.suptitle("SmolLM2-135M-Instruct, teacher-forced decode path, interval 64, positions 1088..4095; "
                 "KL error bars = paired SE of the difference to StreamingLLM", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+")
    p.add_argument("--label", action="append", default=[], help="SPEC=display name (repeatable, sets the order)")
    p.add_argument("--plot", help="write the plot here")
    p.add_argument("--versus", help="also print paired KL differences of the TriAttention rows to this method")
    args = p.parse_args()
    labels, order = {}, []
    for item in args.label:
        spec, _, name = item.rpartition("=")
        labels[spec], order = name, order + [spec]
    results = [load(path) for path in args.results]
    for path, result in zip(args.results, results):
        print(tables(result, labels, order) + "\n")
        if args.versus:
            print(versus_table(result, path, labels, order, args.versus) + "\n")
    print("Scoring cost per round (" + text_name(results[0]) + "; ms measured on the machine that ran it)\n")
    print(cost_table(results[0], labels, order))
    if args.plot:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        print(f"\nwrote {plot(results, labels, order, args.plot)}")


if __name__ == "__main__":
    main()
