"""``triattention bench``: decode tokens/s and physical KV bytes versus generated length."""
from ..scorers.registry import DEFAULT_METHOD, REFERENCE
from .common import (CLIError, add_model_args, check_methods, check_writable, environment, int_list,
                     load_calibration, load_model, set_threads, write_results)


def run(args):
    from ..evaluation.bench import decode_bench, sampled_decode_bench
    from ..generate import build_cache

    budgets = int_list(args.budgets, "--budgets") if args.budgets else []
    check_methods([args.method], budgets[0] if budgets else 256, args.interval)
    for b in budgets[1:]:
        check_methods([args.method], b, args.interval)
    lengths = int_list(args.lengths, "--lengths") if args.max_new_tokens is None else []
    check_writable(args.out, "--out")
    calibration = load_calibration(args.calibration)
    set_threads(args)
    model, tok, name = load_model(args)
    prompt = tok(args.prompt, return_tensors="pt")["input_ids"][0]
    filler = None
    if lengths:
        from ..evaluation.data import DataUnavailable, load_text

        try:
            filler = tok(load_text("paulgraham"), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        except DataUnavailable as err:
            raise CLIError(str(err)) from None
    runs = []
    configs = ([(REFERENCE, None)] if not args.no_full else []) + [(args.method, b) for b in budgets]
    for method, budget in configs:
        label = "full cache" if method == REFERENCE else f"{method} B={budget}"
        cache = build_cache(model, method, budget or 1, args.interval, calibration=calibration)
        if lengths:
            rows = sampled_decode_bench(model, filler, cache, lengths=lengths, window=args.window,
                                        chunk=args.interval, desc=label)
        else:
            rows = decode_bench(model, prompt, cache, max_new_tokens=args.max_new_tokens, every=args.every,
                                desc=label)
        steps = [r["generated"] - (rows[i - 1]["generated"] if i else 0) for i, r in enumerate(rows)]
        total_s = sum(n * r["ms_per_token"] / 1000 for n, r in zip(steps, rows))
        share = sum(r["compact_share"] * n * r["ms_per_token"] / 1000 for n, r in zip(steps, rows)) / total_s
        runs.append({"label": label, "method": method, "budget": budget, "rows": rows,
                     "mean_tokens_per_s": sum(steps) / total_s, "compact_share": share,
                     "final_kv_bytes_used": rows[-1]["kv_bytes_used"]})
        print(f"{label:24s} {runs[-1]['mean_tokens_per_s']:7.1f} tok/s  rounds {rows[-1]['rounds']:4d}  "
              f"round time {100 * share:5.2f}% of decode  KV used at {rows[-1]['logical_length']} tokens: "
              f"{rows[-1]['kv_bytes_used'] / 2 ** 20:.2f} MiB")
        result = {"kind": "bench", "model": name, "device": args.device, "interval": args.interval,
                  "max_new_tokens": args.max_new_tokens, "lengths": lengths, "window": args.window,
                  "prompt_tokens": int(prompt.numel()), "runs": runs, "env": environment()}
        flat = [{"label": r["label"], **row} for r in runs for row in r["rows"]]
        # written after every configuration, so an interrupted long run keeps what it measured
        path = write_results(result, args.out, args.name or f"bench_{max(lengths or [args.max_new_tokens])}", flat)
    print(f"wrote {path}")
    if not args.no_plot:
        from ..evaluation.plots import plot_bench

        for p in plot_bench(result, args.out):
            print(f"wrote {p}")


def add_parser(sub):
    p = sub.add_parser("bench", help="decode tokens/s and physical KV bytes vs generated length",
                       description="Greedy decoding one token per forward (EOS ignored), full cache vs budgets.")
    p.add_argument("--budgets", default="256,1024")
    p.add_argument("--interval", type=int, default=64)
    p.add_argument("--method", default=DEFAULT_METHOD)
    p.add_argument("--calibration")
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384",
                   help="sequence lengths to measure at: the text is fed in interval-sized chunks up to "
                        "L - window, then --window tokens are decoded one per forward and timed")
    p.add_argument("--window", type=int, default=256, help="decoded tokens timed at each length (256)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="instead: decode every token from the prompt up to this many (slow on CPU)")
    p.add_argument("--every", type=int, default=512, help="measurement window with --max-new-tokens")
    p.add_argument("--prompt", default="Write a very long story about a lighthouse keeper.")
    p.add_argument("--no-full", action="store_true", help="skip the full-cache run")
    p.add_argument("--out", default="results")
    p.add_argument("--name")
    p.add_argument("--no-plot", action="store_true")
    add_model_args(p)
    p.set_defaults(func=run)
