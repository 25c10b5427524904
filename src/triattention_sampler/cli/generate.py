"""``triattention generate``: stream text under a KV budget, then the cache's sizes."""
import sys
import time

from ..scorers.registry import DEFAULT_METHOD
from .common import (CLIError, add_cache_args, add_model_args, check_file, check_methods, config_settings,
                     load_calibration, load_model, set_threads)


def check_sampling(args) -> None:
    """Sampling settings transformers would refuse only after the model has loaded."""
    for flag, value, ok, want in (
            ("--temperature", args.temperature, args.temperature > 0, "> 0"),
            ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]"),
            ("--top-k", args.top_k, args.top_k >= 0, ">= 0 (0 = off)"),
            ("--repetition-penalty", args.repetition_penalty, args.repetition_penalty > 0, "> 0 (1.0 = none)")):
        if not ok:
            raise CLIError(f"{flag} must be {want}, got {value}")


def run(args):
    import torch
    from transformers import TextStreamer

    from ..attention import use_triattention_attention
    from ..generate import build_cache

    settings = config_settings(args)
    budget, interval = settings.pop("budget", args.budget), settings.pop("interval", args.interval)
    check_methods([args.method], budget, interval, **settings)
    check_sampling(args)
    if args.prompt_file:
        check_file(args.prompt_file, "prompt file")
        with open(args.prompt_file) as f:
            args.prompt = f.read()
    if not args.prompt:
        raise CLIError("give a prompt (positional) or --prompt-file")
    calibration = load_calibration(args.calibration)
    set_threads(args)
    model, tok, name = load_model(args)
    if args.chat and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(args.prompt, return_tensors="pt")["input_ids"]
    ids = ids.to(args.device)
    try:
        cache = build_cache(model, args.method, budget, interval, calibration=calibration, seed=args.seed, **settings)
    except ValueError as err:
        raise CLIError(str(err).splitlines()[0]) from None
    gen = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, pad_token_id=tok.pad_token_id)
    if args.sample:
        gen.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                   repetition_penalty=args.repetition_penalty)
        torch.manual_seed(args.seed)
    else:
        gen.update(temperature=None, top_p=None, top_k=None)
    if cache.config.prefill_chunk:
        gen["prefill_chunk_size"] = cache.config.prefill_chunk
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True) if args.stream else None
    t0 = time.perf_counter()
    with use_triattention_attention(model), torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                             streamer=streamer, **gen)
    elapsed = time.perf_counter() - t0
    new = out[0, ids.shape[1]:]
    if not args.stream:
        print(tok.decode(new, skip_special_tokens=True))
    s = cache.summary()
    print(f"\n--- {name} | method {args.method} | budget {budget} interval {interval} | "
          f"{new.numel()} new tokens in {elapsed:.1f}s = {new.numel() / elapsed:.1f} tokens/s", file=sys.stderr)
    print(f"--- cache: logical {s['logical_length']} tokens, physical {s['physical_length_pruned_layers']} "
          f"slots per pruned layer, {s['rounds']} rounds, {s['tokens_evicted']} evicted, "
          f"{s['kv_bytes_used'] / 2 ** 20:.2f} MiB used / {s['kv_bytes_allocated'] / 2 ** 20:.2f} MiB allocated, "
          f"calibration {s['calibration']}", file=sys.stderr)


def add_parser(sub, methods_help):
    p = sub.add_parser("generate", help="generate text under a KV budget",
                       description="Generate from a prompt with a compacting cache; streams the text, then prints "
                                   "tokens/s and the cache's physical vs logical size (on stderr).")
    p.add_argument("prompt", nargs="?", help="the prompt")
    p.add_argument("--prompt-file", help="read the prompt from a file")
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help="method spec (default triattention-recommended); settings in brackets, e.g. "
                        f"'snapkv[kernel_size=1,recent_window=32]'. Methods: {methods_help}")
    p.add_argument("--max-new-tokens", type=int, default=1000)
    p.add_argument("--no-chat", dest="chat", action="store_false", help="do not apply the chat template")
    p.add_argument("--no-stream", dest="stream", action="store_false", help="print the text at the end")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="with --sample (1.0 = none)")
    p.add_argument("--seed", type=int, default=0)
    add_cache_args(p)
    g = p.add_argument_group("TriAttention settings")
    g.add_argument("--attn-granularity", dest="granularity", choices=["per_head", "per_layer_head", "union"],
                   help="per_head (default), per_layer_head or union")
    g.add_argument("--sink-tokens", type=int, help="first tokens always kept (default 0; streamingllm 4)")
    g.add_argument("--recent-window", type=int, help="last tokens always kept (default 0)")
    g.add_argument("--prefill-chunk", type=int, help="read long prompts in chunks of this many tokens, "
                                                       "compacting between chunks (default: whole prompt)")
    g.add_argument("--no-pin-prompt", action="store_true", help="let prompt tokens be evicted")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any TriAttentionConfig field, e.g. --set score_layer_stride=4 (repeatable)")
    add_model_args(p)
    p.set_defaults(func=run)
