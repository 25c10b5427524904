"""Measure the sampler's acceptance figures on SmolLM2 (prints them; not a test).

    .venv/bin/python scripts/acceptance_sampler.py --new 2000 --budget 256 --interval 64
"""
import argparse
import time

import torch

import triattention_sampler as ts

PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain step by step how a steam engine works, with history and examples.",
    "Hi! Tell me everything you know about the planets of the solar system.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=2000)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--interval", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = ts.load_smollm2()
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in PROMPTS]
    batch = tok(texts, return_tensors="pt", padding=True)
    cache = ts.TriAttentionCache(model, budget=args.budget, interval=args.interval)
    peaks = []  # physical slots after each round, and the slack peak (budget + interval) seen before it
    cache.add_round_callback(lambda c: peaks.extend([args.budget + args.interval, max(c.physical_lengths())]))
    t0 = time.perf_counter()
    with ts.use_triattention_attention(model):
        out = model.generate(**batch, past_key_values=cache, max_new_tokens=args.new, min_new_tokens=args.new,
                             do_sample=False)
    dt = time.perf_counter() - t0
    width = batch["input_ids"].shape[1]
    print(f"batch of 3: {args.new} new tokens/row in {dt:.1f} s = {3 * args.new / dt:.1f} tok/s")
    print(f"rounds {cache.rounds}; max physical tokens around rounds {max(peaks)} (limit "
          f"{args.budget + args.interval}); after rounds {sorted(set(peaks[1::2]))}")
    print(f"get_seq_length {cache.get_seq_length()} == logical {width + args.new - 1}: "
          f"{cache.get_seq_length() == width + args.new - 1}")
    print(f"summary {dict((k, v) for k, v in cache.summary().items() if k != 'physical_lengths')}")
    for row, text in enumerate(texts):
        solo = tok(text, return_tensors="pt")
        t0 = time.perf_counter()
        ids = ts.generate(model, solo["input_ids"], budget=args.budget, interval=args.interval,
                          max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
        dt = time.perf_counter() - t0
        same = torch.equal(out[row, width:], ids[0, solo["input_ids"].shape[1]:])
        print(f"row {row}: batched == solo: {same}  (solo {args.new / dt:.1f} tok/s)")
    print("sample (row 0, last 600 characters):")
    print(tok.decode(out[0, width:], skip_special_tokens=True)[-600:])


if __name__ == "__main__":
    main()
