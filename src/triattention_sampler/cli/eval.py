"""``triattention eval``: teacher-forced quality (KL / top-1 / NLL vs the full cache) or pass-key retrieval."""
import os

from ..scorers.registry import BASELINE, EVAL_METHODS, REFERENCE
from .common import (CLIError, add_model_args, check_file, check_methods, check_writable, environment, int_list,
                     load_calibration, load_model, set_threads, write_results)



def default_calibration(args, model, tok, given=None):
    """Offline calibration for the eval: --calibration (``given``: read before the model loads), or Milton
    calibrated once and cached."""
    from ..calibration import CalibrationStats
    from ..calibration.procedure import calibrate
    from ..evaluation.data import CACHE_DIR, CALIBRATION_CORPUS, load_text

    if args.calibration:
        return given if given is not None else load_calibration(args.calibration), args.calibration
    if args.model:
        tag = args.model.replace("/", "_") + (("_" + args.gguf_file) if args.gguf_file else "")
    else:
        tag = "smollm2-135m"
    path = os.path.join(CACHE_DIR, f"calib_{tag}_{CALIBRATION_CORPUS}_{args.calibration_tokens}.safetensors")
    if not os.path.exists(path):
        stats = calibrate(model, tok, load_text(CALIBRATION_CORPUS), max_tokens=args.calibration_tokens,
                          source=CALIBRATION_CORPUS)
        os.makedirs(CACHE_DIR, exist_ok=True)
        stats.save(path)
    return CalibrationStats.load(path), path


def run_needle(args, methods, budgets):
    from ..evaluation.data import DataUnavailable, load_text
    from ..evaluation.needle import run_needle as needle
    from ..evaluation.tables import needle_table
    from ..generate import build_cache
    from ..model_info import describe_model

    try:
        text = load_text("paulgraham")
        depths = [float(d) for d in args.depths.split(",")]
    except DataUnavailable as err:
        raise CLIError(str(err)) from None
    except ValueError:
        raise CLIError(f"--depths must be comma-separated fractions, got {args.depths!r}") from None
    if any(not 0 <= d <= 1 for d in depths):
        raise CLIError("--depths must be fractions in [0, 1]")
    given = load_calibration(args.calibration)  # a bad file is reported before the model loads
    set_threads(args)
    model, tok, name = load_model(args)
    calibration, calib_path = default_calibration(args, model, tok, given)
    info = describe_model(model)
    text_ids = tok(text, add_special_tokens=False)["input_ids"]

    def make_runs():
        runs = {REFERENCE: build_cache(model, REFERENCE, 1, args.interval, model_info=info)}
        for b in budgets:
            for m in methods:
                runs[f"{m}@{b}"] = build_cache(model, m, b, args.interval, calibration=calibration,
                                               model_info=info, seed=args.seed)
        return runs

    rows = needle(model, tok, text_ids, make_runs, haystack_tokens=args.tokens, depths=depths, seed=args.seed,
                  chunk=args.chunk)
    result = {"kind": "needle", "model": name, "haystack_tokens": args.tokens, "depths": depths,
              "budgets": budgets, "methods": methods, "interval": args.interval, "calibration": calib_path,
              "rows": rows, "env": environment()}
    path = write_results(result, args.out, args.name or f"needle_{args.tokens}", rows)
    print("\n" + needle_table(rows, depths))
    print(f"wrote {path}")


def run(args):
    import torch

    from ..evaluation.data import CALIBRATION_CORPUS, DataUnavailable, load_text
    from ..evaluation.metrics import paired_difference, summarize
    from ..evaluation.quality import stream_quality
    from ..evaluation.tables import compare_with, quality_matrix, quality_table, round_cost
    from ..generate import build_cache
    from ..model_info import describe_model
    from ..scorers.registry import split_methods, takes_file

    methods = split_methods(args.methods)
    budgets = int_list(args.budgets, "--budgets")
    for b in budgets:
        check_methods(methods, b, args.interval)
        if b % args.chunk or args.interval % args.chunk:
            raise CLIError(f"--chunk {args.chunk} must divide every budget and the interval ({args.interval})")
    if args.compare:
        check_file(args.compare, "results file to compare with")
    check_writable(args.out, "--out")
    if args.task == "needle":
        return run_needle(args, methods, budgets)
    if args.text == CALIBRATION_CORPUS and not args.calibration:
        raise CLIError(f"evaluation text {args.text!r} is the calibration corpus: pick another text")
    given = load_calibration(args.calibration)  # a bad file is reported before the text or the model loads
    try:
        text = load_text(args.text)
    except DataUnavailable as err:
        raise CLIError(str(err)) from None
    set_threads(args)
    model, tok, name = load_model(args)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if args.offset:
        ids = ids[args.offset:]
    if ids.numel() < args.tokens + 1:
        raise CLIError(f"text {args.text!r} has {ids.numel()} tokens, fewer than --tokens {args.tokens} + 1")
    ids = ids[: args.tokens + 1]
    calibration, calib_path = (None, None)
    if any(takes_file(m, evaluation=True) for m in methods):
        calibration, calib_path = default_calibration(args, model, tok, given)
    info = describe_model(model)
    element = next(model.parameters()).element_size()
    rows, per_token = [], {}
    eval_start = max(budgets) + args.interval if args.eval_start < 0 else args.eval_start
    for budget in budgets:
        runs = {m: build_cache(model, m, budget, args.interval, model_info=info, seed=args.seed,
                               calibration=calibration if takes_file(m, evaluation=True) else None)
                for m in methods}
        res = stream_quality(model, ids, runs, chunk=args.chunk, desc=f"budget {budget}")
        for m in methods:
            tail, whole = summarize(res[m], eval_start), summarize(res[m])
            summary = res["_summary"][m]
            rows.append({"method": m, "budget": budget, **{k: round(v, 5) for k, v in tail.items()},
                         **{f"{k}_all": round(v, 5) for k, v in whole.items() if k in ("nll", "kl", "top1")},
                         "seconds": round(res["_timing"][m], 2), "rounds": summary["rounds"],
                         "compact_seconds": round(summary["compact_seconds"], 2),
                         **round_cost(m, summary, info, budget, args.interval, element)})
            if BASELINE in res and m != BASELINE:  # paired against the same tokens
                for key in ("kl", "nll", "agree"):
                    pd = paired_difference(res[m][key], res[BASELINE][key], eval_start, args.interval)
                    tag = "top1" if key == "agree" else key
                    rows[-1][f"d{tag}_vs_streamingllm"] = round(pd["diff"], 5)
                    rows[-1][f"d{tag}_vs_streamingllm_se"] = round(pd["se"], 5)
            per_token[f"{m}@{budget}"] = {k: v.half() for k, v in res[m].items() if k != "nll_ref"}
        per_token[f"full@{budget}"] = {"nll_ref": res[methods[0]]["nll_ref"].half()} if methods else {}
        print(quality_table([r for r in rows if r["budget"] == budget]))
    result = {"kind": "quality", "model": name, "text": args.text, "tokens": args.tokens, "offset": args.offset,
              "calibration": calib_path, "calibration_corpus": None if args.calibration else CALIBRATION_CORPUS,
              "interval": args.interval, "chunk": args.chunk, "eval_start": eval_start, "budgets": budgets,
              "methods": methods, "rows": rows, "env": environment()}
    stem = args.name or f"quality_{args.text if os.path.sep not in args.text else 'file'}_{args.tokens}"
    path = write_results(result, args.out, stem, rows)
    torch.save(per_token, os.path.join(args.out, f"{stem}_per_token.pt"))
    print(f"\nwrote {path}")
    print(quality_matrix(rows, budgets, methods))
    if args.compare:
        print("\n" + compare_with(rows, args.compare))
    if not args.no_plot:
        from ..evaluation.plots import plot_quality

        for p in plot_quality(result, args.out):
            print(f"wrote {p}")


def add_parser(sub):
    p = sub.add_parser("eval", help="teacher-forced quality vs the full cache (KL, top-1, NLL)",
                       description="Stream a long text through the decode path with compression active and "
                                   "compare each method/budget with a full-cache run of the same text.")
    p.add_argument("--task", default="quality", choices=["quality", "needle"],
                   help="quality: KL/top-1/NLL over a long text; needle: pass-key digits planted in the essays "
                        "(--tokens = haystack length, --depths)")
    p.add_argument("--depths", default="0.1,0.5,0.9", help="needle depths (fractions of the haystack)")
    p.add_argument("--text", default="paulgraham", help="paulgraham (default), hamlet, or a text file")
    p.add_argument("--tokens", type=int, default=4096, help="tokens streamed (4096)")
    p.add_argument("--offset", type=int, default=0, help="skip this many tokens of the text first")
    p.add_argument("--budgets", default="128,256,512,1024")
    p.add_argument("--interval", type=int, default=64)
    p.add_argument("--methods", default=",".join(EVAL_METHODS), help="comma-separated method specs; "
                   "'triattention' and the tri-* ablations use offline calibration (Milton), the others online "
                   "statistics; settings in brackets, e.g. "
                   "'triattention-online[recent_window=32,score_layer_stride=4]'")
    p.add_argument("--calibration", help="offline calibration file (default: Milton, calibrated and cached)")
    p.add_argument("--calibration-tokens", type=int, default=32768)
    p.add_argument("--chunk", type=int, default=32, help="tokens per forward; must divide budgets and interval "
                   "(results equal token-by-token decoding)")
    p.add_argument("--eval-start", type=int, default=-1,
                   help="average metrics from this position (default: largest budget + interval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results")
    p.add_argument("--name", help="result file stem")
    p.add_argument("--compare", help="earlier quality JSON to print differences against")
    p.add_argument("--no-plot", action="store_true")
    add_model_args(p)
    p.set_defaults(func=run)
