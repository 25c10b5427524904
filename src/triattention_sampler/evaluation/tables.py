"""Result tables printed by the CLI: quality rows per budget, the method x budget matrix, differences to an older
run, and the measured/analytic cost of a method's rounds."""
import json


def round_cost(method, summary, info, budget, interval, element_bytes) -> dict:
    """Measured scoring time per round (this machine) and the analytic bytes/FLOPs of one round's scoring."""
    from .cost import scoring_cost

    rounds = summary["rounds"]
    cost = scoring_cost(method, info, budget + interval, element_bytes=element_bytes, budget=budget,
                        interval=interval)
    return {"score_ms_per_round": round(1000 * summary.get("score_seconds", 0.0) / rounds, 3) if rounds else 0.0,
            "round_ms": round(1000 * summary["compact_seconds"] / rounds, 3) if rounds else 0.0,
            "score_kib_per_round": round(cost["bytes"] / 1024, 1),
            "score_mflop_per_round": round(cost["flops"] / 1e6, 2), "scored_layers": cost["scored_layers"]}


def quality_table(rows) -> str:
    width = max([22] + [len(r["method"]) for r in rows])
    head = (f"{'method':{width}s} {'budget':>6s} {'KL':>8s} {'dKL vs SLLM (SE)':>20s} {'top1':>7s} {'NLL':>7s} "
            f"{'NLLfull':>7s} {'score ms':>8s} {'sec':>6s}")
    lines = [head]
    for r in rows:
        d = (f"{r['dkl_vs_streamingllm']:+.4f} ({r['dkl_vs_streamingllm_se']:.4f})"
             if "dkl_vs_streamingllm" in r else "")
        lines.append(f"{r['method']:{width}s} {r['budget']:6d} {r['kl']:8.4f} {d:>20s} {r['top1']:7.4f} "
                     f"{r['nll']:7.4f} {r['nll_ref']:7.4f} {r.get('score_ms_per_round', 0.0):8.2f} {r['seconds']:6.1f}")
    return "\n".join(lines)


def quality_matrix(rows, budgets, methods) -> str:
    """Markdown table: one line per method, KL / top-1 / NLL per budget."""
    head = "| method | " + " | ".join(f"B={b} KL / top-1 / NLL" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    by = {(r["method"], r["budget"]): r for r in rows}
    for m in methods:
        cells = [f"{by[m, b]['kl']:.4f} / {100 * by[m, b]['top1']:.1f}% / {by[m, b]['nll']:.3f}" for b in budgets]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ref = rows[0]["nll_ref"] if rows else float("nan")
    lines.append("| full cache | " + " | ".join(f"0 / 100% / {ref:.3f}" for _ in budgets) + " |")
    return "\n".join(lines)


def compare_with(rows, path) -> str:
    """Differences (new - old) to the rows of an earlier quality JSON."""
    with open(path) as f:
        old = {(r["method"], r["budget"]): r for r in json.load(f)["rows"]}
    lines = [f"compared with {path} (new - old):"]
    for r in rows:
        o = old.get((r["method"], r["budget"]))
        if o:
            lines.append(f"  {r['method']:22s} B={r['budget']:5d}  dKL {r['kl'] - o['kl']:+.4f}  "
                         f"dtop1 {r['top1'] - o['top1']:+.4f}  dNLL {r['nll'] - o['nll']:+.4f}")
    return "\n".join(lines)


def needle_table(rows, depths) -> str:
    labels = list(dict.fromkeys(r["label"] for r in rows))
    lines = ["| method@budget | " + " | ".join(f"depth {d}" for d in depths) + " | mean digit acc |",
             "|---" * (len(depths) + 2) + "|"]
    for label in labels:
        accs = [r["digit_acc"] for r in rows if r["label"] == label]
        lines.append(f"| {label} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {sum(accs) / len(accs):.2f} |")
    return "\n".join(lines)
