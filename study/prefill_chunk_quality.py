"""Quality of reading a long prompt in chunks (rounds between chunks) against reading it whole and compacting once.

A prompt of ``--prompt`` essay tokens is read either in one forward or in ``--chunks`` pieces; then ``--tokens``
continuation tokens are teacher-forced in 32-token steps (rounds fire as in token-by-token decoding). Reported over
the continuation: KL(full || compressed), top-1 agreement, and the paired difference chunked - whole with its
standard error from 64-token block means.

    .venv/bin/python study/prefill_chunk_quality.py --budgets 256,1024 --chunks 512,1024 --threads 2
"""
import argparse
import json
import time

import torch

import triattention_sampler as ts
from triattention_sampler.evaluation.data import load_text
from triattention_sampler.evaluation.metrics import paired_difference, summarize, token_metrics


@torch.no_grad()
def run(model, ids, prompt, cache, chunk, step):
    """Log-probs of the continuation tokens (predicting ids[t+1] from ids[:t+1], t >= prompt - 1)."""
    cache.expected_prompt = [prompt]  # what generate would say: the prompt is all of it, however it is read
    size = chunk or prompt
    out = []
    for start in range(0, prompt, size):
        logits = model(input_ids=ids[None, start:min(prompt, start + size)], past_key_values=cache,
                       use_cache=True).logits
    out.append(torch.log_softmax(logits[0, -1:].float(), -1))
    for start in range(prompt, ids.numel() - 1, step):
        logits = model(input_ids=ids[None, start:min(ids.numel() - 1, start + step)], past_key_values=cache,
                       use_cache=True).logits
        out.append(torch.log_softmax(logits[0].float(), -1))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--budgets", default="256,1024")
    ap.add_argument("--chunks", default="512,1024")
    ap.add_argument("--interval", type=int, default=64)
    ap.add_argument("--method", default="triattention-recommended")
    ap.add_argument("--offset", type=int, default=8192, help="start in the essays (tokens)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="results/prefill_chunk_quality.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = ts.load_smollm2()
    text_ids = tok(load_text("paulgraham"), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    ids = text_ids[args.offset:args.offset + args.prompt + args.tokens + 1]
    targets = ids[args.prompt:]
    with ts.use_triattention_attention(model):
        full = ts.build_cache(model, "full", 1, args.interval)
        t0 = time.time()
        ref = run(model, ids, args.prompt, full, 0, 32)
        rows = [{"budget": None, "chunk": None, "seconds": round(time.time() - t0, 1)}]
        for budget in map(int, args.budgets.split(",")):
            per = {}
            for chunk in [0, *map(int, args.chunks.split(","))]:
                cache = ts.build_cache(model, args.method, budget, args.interval, prefill_chunk=chunk)
                t0 = time.time()
                logp = run(model, ids, args.prompt, cache, chunk, 32)
                per[chunk] = token_metrics(ref, logp, targets)
                s = summarize(per[chunk])
                row = {"budget": budget, "chunk": chunk, "kl": round(s["kl"], 5), "top1": round(s["top1"], 4),
                       "rounds": cache.rounds, "max_slots": max(cache.physical_lengths()),
                       "seconds": round(time.time() - t0, 1)}
                if chunk:
                    for key in ("kl", "agree"):
                        pd = paired_difference(per[chunk][key], per[0][key], 0, 64)
                        row[f"d{'top1' if key == 'agree' else key}_vs_whole"] = round(pd["diff"], 5)
                        row[f"d{'top1' if key == 'agree' else key}_vs_whole_se"] = round(pd["se"], 5)
                rows.append(row)
                print(json.dumps(row), flush=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
