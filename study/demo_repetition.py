"""How much does the demo's sample loop? Runs `triattention generate` settings (the CLI itself, the model loaded once)
and measures repetition in the generated text.

    OMP_NUM_THREADS=2 .venv/bin/python study/demo_repetition.py --out results/demo_repetition.json

Metrics (over whitespace words, lower-cased):
    rep4        fraction of word 4-grams that already occurred earlier in the text (0 = none repeated; a text that
                loops a paragraph tends to 1)
    rep4_tail   the same over the last 300 words (loops tend to set in late, once the budget forces evictions)
    dup_lines   fraction of non-empty lines that repeat an earlier line verbatim
    nll, nll_tail   the model's own mean NLL (nats/token, full attention, no cache) of the generated text and of its
                last 300 tokens: a loop is very predictable (low), word salad is not (high); fluent text lies between.
                A repetition penalty can trade loops for salad, which rep4 alone would score as a win.
"""
import argparse
import contextlib
import io
import json
import os
import re
import sys
import time

STORY = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
GUIDE = ("Write a detailed beginner's guide to keeping bees, with numbered sections: equipment, choosing a site, "
         "getting bees, seasonal tasks, common problems and harvesting honey.")


def repetition(text: str, n: int = 4, tail_words: int = 300) -> dict:
    """rep4 / rep4_tail / dup_lines (see the module docstring) of ``text``."""
    def repeated_ngrams(words):
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        return 1 - len(set(grams)) / len(grams) if grams else 0.0

    words = re.findall(r"\S+", text.lower())
    lines = [line.strip().lower() for line in text.splitlines() if line.strip()]
    seen, dups = set(), 0
    for line in lines:
        dups += line in seen
        seen.add(line)
    return {"words": len(words), "rep4": round(repeated_ngrams(words), 4),
            "rep4_tail": round(repeated_ngrams(words[-tail_words:]), 4),
            "dup_lines": round(dups / len(lines), 4) if lines else 0.0}


def model_nll(model, tok, prompt: str, text: str, tail: int = 300) -> dict:
    """Mean NLL of ``text``'s tokens after the chat-templated ``prompt`` (as the CLI feeds it), and of the last
    ``tail`` of them."""
    import torch

    head = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)["input_ids"]
    body = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = torch.cat([head, body], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, head.shape[1] - 1:-1].float()
    nll = torch.nn.functional.cross_entropy(logits, body[0], reduction="none")
    return {"nll": round(float(nll.mean()), 3), "nll_tail": round(float(nll[-tail:].mean()), 3)}


CHAPTERS = ("Write a long story in five chapters about a lighthouse keeper who finds a message in a bottle. "
            "Give each chapter a title.")

SETTINGS = [  # (label, prompt, extra CLI flags)
    ("story T0.6 p0.95 rp1.0 (old default)", STORY, ["--temperature", "0.6", "--top-p", "0.95"]),
    ("story T0.7 p0.95 rp1.1", STORY, ["--temperature", "0.7", "--top-p", "0.95", "--repetition-penalty", "1.1"]),
    ("story T0.7 p0.9 rp1.2", STORY, ["--temperature", "0.7", "--top-p", "0.9", "--repetition-penalty", "1.2"]),
    ("story T0.8 p0.95 rp1.1", STORY, ["--temperature", "0.8", "--top-p", "0.95", "--repetition-penalty", "1.1"]),
    ("guide T0.7 p0.9 rp1.1", GUIDE, ["--temperature", "0.7", "--top-p", "0.9", "--repetition-penalty", "1.1"]),
    ("guide T0.7 p0.9 rp1.2", GUIDE, ["--temperature", "0.7", "--top-p", "0.9", "--repetition-penalty", "1.2"]),
    ("story T0.7 p0.95 rp1.15", STORY, ["--temperature", "0.7", "--top-p", "0.95", "--repetition-penalty", "1.15"]),
    ("guide T0.7 p0.95 rp1.15", GUIDE, ["--temperature", "0.7", "--top-p", "0.95", "--repetition-penalty", "1.15"]),
    ("chapters T0.7 p0.95 rp1.1", CHAPTERS, ["--temperature", "0.7", "--top-p", "0.95", "--repetition-penalty", "1.1"]),
    ("chapters T0.7 p0.95 rp1.05", CHAPTERS, ["--temperature", "0.7", "--top-p", "0.95", "--repetition-penalty",
                                               "1.05"]),
]


def main():
    from triattention_sampler.cli import generate as generate_cmd
    from triattention_sampler.cli import main as cli

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", type=int, nargs="*", help="indices of SETTINGS to run (default all)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--max-new-tokens", type=int, default=1500)
    p.add_argument("--out", default="results/demo_repetition.json")
    p.add_argument("--score", action="store_true", help="only add nll / nll_tail to the rows already in --out")
    args = p.parse_args()
    if args.score:
        return score(args.out)

    loaded = {}
    real_load = generate_cmd.load_model

    def load_once(a):  # the CLI loads the model per call; load it once for all settings
        if "model" not in loaded:
            loaded["model"] = real_load(a)
        return loaded["model"]

    generate_cmd.load_model = load_once
    rows = json.load(open(args.out)) if os.path.exists(args.out) else []
    for i, (label, prompt, flags) in enumerate(SETTINGS):
        if args.only is not None and i not in args.only:
            continue
        for seed in [int(s) for s in args.seeds.split(",")]:
            argv = ["generate", prompt, "--budget", "256", "--interval", "64", "--max-new-tokens",
                    str(args.max_new_tokens), "--sample", "--seed", str(seed), "--no-stream", *flags]
            out, err = io.StringIO(), io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli(argv)
            if code:
                sys.exit(f"{label}: exit {code}: {err.getvalue()}")
            speed = re.search(r"(\d+) new tokens in ([\d.]+)s = ([\d.]+) tokens/s", err.getvalue())
            model, tok, _ = loaded["model"]
            row = {"label": label, "seed": seed, "flags": flags, "prompt": prompt, **repetition(out.getvalue()),
                   **model_nll(model, tok, prompt, out.getvalue()),
                   "new_tokens": int(speed.group(1)), "tokens_per_s": float(speed.group(3)),
                   "wall_s": round(time.perf_counter() - t0, 1), "text": out.getvalue()}
            rows.append(row)
            print(line(row), flush=True)
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)


def line(row) -> str:
    return (f"{row['label']:40s} seed {row['seed']}  rep4 {row['rep4']:.3f}  tail {row['rep4_tail']:.3f}  "
            f"dup_lines {row['dup_lines']:.3f}  nll {row.get('nll', float('nan')):.2f}  tail "
            f"{row.get('nll_tail', float('nan')):.2f}  {row['new_tokens']} tok  {row['tokens_per_s']:.1f} tok/s")


def score(path: str) -> None:
    from triattention_sampler.models import load_model

    model, tok, _ = load_model(None)
    rows = json.load(open(path))
    for row in rows:
        row.update(model_nll(model, tok, row["prompt"], row["text"]))
        print(line(row), flush=True)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
