"""End to end: prefill time, decode tokens/s and peak memory of full cache vs TriAttention vs a plain cache of the
budget's size (the ceiling for any bounded cache), per batch x prompt length, with the ratios.

    python benchmarks/bench_e2e.py                                  # SmolLM2 on this CPU, 1K..4K prompts, batch 1
    python benchmarks/bench_e2e.py --device cuda --model llama8b    # built-in Llama-3.1-8B shapes, random bf16 weights
    python benchmarks/bench_e2e.py --model tiny --dry               # seconds: checks the script itself

Modes: ``full`` = stock ``sdpa`` with transformers' DynamicCache over the whole prompt; ``tri`` = this project
(``--method``, default triattention-recommended, ``--budget``/``--interval``); ``tri-chunk`` = the same reading the
prompt in ``--chunk``-token pieces with rounds between them (memory flat in the prompt length); ``plain`` = stock
``sdpa`` over the last ``budget`` prompt tokens (after its first round TriAttention holds the same number, growing
alike); ``static`` = TriAttention with ``static=True`` (transformers compiles its decode step on CUDA); ``hf-static`` =
transformers' static cache over the last ``budget`` prompt tokens, compiled (no compression: the speed ceiling).
Decode tokens/s excludes the first decode step (it carries the round that compacts a long prompt, and any
compilation); the ratios use the median step.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

PRESETS = {  # random-weight models of real shapes (built on the device, never downloaded)
    "llama8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0),
    "llama1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0),
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=65536, rope_theta=500000.0),
}


def build_model(name: str, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    import triattention_sampler as ts

    if name == "smollm2":
        model, tok = ts.load_smollm2(dtype=dtype, device=device)
        return model, tok
    cfg = AutoConfig.for_model("llama", pad_token_id=0, bos_token_id=1, eos_token_id=2, **PRESETS[name])
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
    return model, None


class Stamps:
    """A logits processor that records when each step's logits are ready."""

    def __init__(self, device):
        self.device, self.t = device, []

    def __call__(self, input_ids, scores):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.t.append(time.perf_counter())
        return scores


def cache_bytes(cache) -> int:
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def run_once(model, mode, ids, args, device):
    from transformers import LogitsProcessorList

    import triattention_sampler as ts

    stamps = Stamps(device)
    kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=0,
              logits_processor=LogitsProcessorList([stamps]), return_dict_in_generate=True)
    if args.compile and mode in ("static", "hf-static"):
        from transformers import CompileConfig

        config = CompileConfig(backend=args.compile_backend, mode=None)
        config._compile_all_devices = True
        kw["compile_config"] = config
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    summary = None
    if mode in ("tri", "tri-chunk", "static"):
        chunk = args.chunk if mode == "tri-chunk" else args.prefill_chunk
        settings = dict(budget=args.budget, interval=args.interval, prefill_chunk=chunk, static=mode == "static")
        out, cache = ts.generate(model, ids, method=args.method, return_cache=True, **settings, **kw)
        s = cache.summary()
        summary = {k: s[k] for k in ("logical_length", "physical_length_pruned_layers", "rounds", "compact_seconds",
                                     "kv_bytes_allocated")}
    else:
        model.set_attn_implementation("sdpa")
        if mode in ("plain", "hf-static"):
            ids = ids[:, -args.budget:]
        if mode == "hf-static":
            kw["cache_implementation"] = "static"
        out = model.generate(input_ids=ids, **kw)
        cache = out.past_key_values
    total = time.perf_counter() - t0
    steps = [b - a for a, b in zip(stamps.t[1:], stamps.t[2:])]  # decode steps after the first
    row = {"mode": mode, "batch": ids.shape[0], "prompt": ids.shape[1], "new": args.new,
           "prefill_s": round(stamps.t[0] - t0, 4), "first_step_s": round(stamps.t[1] - stamps.t[0], 4),
           "decode_tok_s": round(ids.shape[0] * len(steps) / sum(steps), 2) if steps else None,
           "step_ms": round(1000 * sorted(steps)[len(steps) // 2], 3) if steps else None,
           "total_s": round(total, 3), "kv_bytes": cache_bytes(cache), "cache": summary}
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
    if mode in ("static", "hf-static"):  # what torch.compile made of the decode step (so far in this process)
        from torch._dynamo.utils import counters

        row["dynamo"] = {"graphs": counters["stats"].get("unique_graphs", 0),
                         "graph_breaks": dict(counters["graph_break"])}
    del out, cache
    return row


def ratios(rows):
    """TriAttention relative to the full cache (prefill, memory) and to the plain cache of its size (decode)."""
    by = {r["mode"]: r for r in rows if "error" not in r}
    out = {}
    tri = by.get("tri") or by.get("tri-chunk") or by.get("static")
    if "tri-chunk" in by and "full" in by and "peak_gib" in by["tri-chunk"]:
        out["chunked_peak_vs_full"] = round(by["tri-chunk"]["peak_gib"] / by["full"]["peak_gib"], 3)
    if tri and "full" in by:
        out["prefill_vs_full"] = round(tri["prefill_s"] / by["full"]["prefill_s"], 3)
        if "peak_gib" in tri:
            out["peak_vs_full"] = round(tri["peak_gib"] / by["full"]["peak_gib"], 3)
        out["kv_bytes_vs_full"] = round(tri["kv_bytes"] / max(1, by["full"]["kv_bytes"]), 4)
    for mode in ("tri", "static"):  # decode speed from the median step (compile and graph capture excluded)
        for ref in ("plain", "hf-static", "full"):
            if mode in by and ref in by and by[mode]["step_ms"] and by[ref]["step_ms"]:
                out[f"{mode}_decode_vs_{ref.replace('-', '_')}"] = round(by[ref]["step_ms"] / by[mode]["step_ms"], 3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, choices=["smollm2", *PRESETS], help="default: smollm2 on CPU, "
                    "llama8b on CUDA")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    ap.add_argument("--cases", default=None, help="batch x prompt pairs, e.g. 1x32768,8x16384,32x8192")
    ap.add_argument("--modes", default="full,tri,plain")
    ap.add_argument("--new", type=int, default=64, help="new tokens per run")
    ap.add_argument("--budget", type=int, default=None, help="default 256 on CPU, 2048 on CUDA")
    ap.add_argument("--interval", type=int, default=None, help="default 64 on CPU, 128 on CUDA")
    ap.add_argument("--method", default="triattention-recommended")
    ap.add_argument("--prefill-chunk", type=int, default=0, help="prefill chunk of the tri / static modes")
    ap.add_argument("--chunk", type=int, default=4096, help="prefill chunk of the tri-chunk mode")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode, interleaved (the median row is kept)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="compile the decode step of static / hf-static on CPU too "
                    "(transformers compiles on CUDA by itself)")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--deadline-s", type=float, default=420.0, help="skip remaining cases after this many seconds")
    ap.add_argument("--json", help="write all rows here")
    ap.add_argument("--dry", action="store_true", help="tiny shapes, to check the script")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or ("tiny" if args.dry else "llama8b" if cuda else "smollm2")
    args.budget = args.budget or (64 if args.dry else 2048 if cuda else 256)
    args.interval = args.interval or (16 if args.dry else 128 if cuda else 64)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype or ("bfloat16" if cuda else "float32")]
    default_cases = "1x256,2x300" if args.dry else "1x32768,8x16384,32x8192" if cuda else "1x1024,1x4096"
    cases = [tuple(int(x) for x in c.split("x")) for c in (args.cases or default_cases).split(",")]
    modes = args.modes.split(",")
    started = time.time()
    model, _ = build_model(args.model, args.device, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    result = {"model": args.model, "device": str(device), "dtype": str(dtype), "budget": args.budget,
              "interval": args.interval, "method": args.method, "new": args.new, "weights_gib": weights / 2 ** 30,
              "gpu": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cases": []}
    for batch, prompt in cases:
        if time.time() - started > args.deadline_s:
            result["cases"].append({"batch": batch, "prompt": prompt, "skipped": "deadline"})
            continue
        ids = torch.randint(10, model.config.vocab_size, (batch, prompt),
                            generator=torch.Generator().manual_seed(prompt)).to(device)
        runs = {m: [] for m in modes}
        for _ in range(args.repeat):
            for mode in modes:
                try:
                    runs[mode].append(run_once(model, mode, ids, args, device))
                except Exception as err:  # noqa: BLE001 - one failing mode must not lose the others' figures
                    runs[mode].append({"mode": mode, "error": f"{type(err).__name__}: {str(err)[:300]}"})
                    if cuda:
                        torch.cuda.empty_cache()
        rows = []
        for mode, done in runs.items():
            ok = sorted((r for r in done if "error" not in r), key=lambda r: r["decode_tok_s"] or 0)
            row = dict(ok[len(ok) // 2]) if ok else done[-1]
            if len(ok) > 1:  # every run's figures, so the spread is visible
                for key in ("prefill_s", "decode_tok_s"):
                    row[f"{key}_runs"] = [r[key] for r in done if "error" not in r]
                row["prefill_s"] = sorted(row["prefill_s_runs"])[len(ok) // 2]
            rows.append(row)
        case = {"batch": batch, "prompt": prompt, "rows": rows, "ratios": ratios(rows)}
        result["cases"].append(case)
        for r in rows:
            print(json.dumps(r), flush=True)
        print(f"== {batch} x {prompt}: {case['ratios']}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    result["wall_s"] = round(time.time() - started, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
