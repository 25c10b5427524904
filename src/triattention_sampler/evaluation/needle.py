"""Pass-key retrieval built from the Paul Graham essays, streamed through the decode path.

A random 6-digit key is planted at a depth of an essay haystack; the sequence ends with the question and
the answer (``... What is the pass key? The pass key is 583920.``). The whole sequence is teacher-forced
with compression active (nothing pinned: the "prompt" is one token), and we score the compressed model's
top-1 prediction of each answer digit. SmolLM2-135M cannot answer in free generation (it rambles even with
the full cache), but with the full cache its induction heads copy every digit; a method that evicted the
needle cannot.
"""
import random
from typing import Dict, List

import torch

from .quality import stream_quality

NEEDLE = " The pass key is {key}. Remember it. "
QUESTION = "\nWhat is the pass key? The pass key is"


def build_needle(tok, haystack_ids: List[int], depth: float, key: str):
    """(ids [T], answer positions as indices of predicted tokens) for one depth."""
    cut = int(len(haystack_ids) * depth)
    needle = tok(NEEDLE.format(key=key), add_special_tokens=False)["input_ids"]
    question = tok(QUESTION, add_special_tokens=False)["input_ids"]
    answer = tok(" " + key, add_special_tokens=False)["input_ids"]
    seq = haystack_ids[:cut] + needle + haystack_ids[cut:] + question + answer
    digits = [i for i, t in enumerate(answer) if tok.decode([t]).strip().isdigit()]
    first = len(seq) - len(answer)
    return torch.tensor(seq), [first + i - 1 for i in digits]  # metric index t predicts token t+1


def run_needle(model, tok, text_ids: List[int], make_runs, *, haystack_tokens: int, depths, seed: int = 0,
               chunk: int = 32, offset: int = 100000) -> List[Dict]:
    """``make_runs()`` -> {label: fresh cache} (include a ``full`` method for the reference). Returns rows:
    label, depth, digit accuracy (compressed top-1 equals the digit), exact match (all digits)."""
    rng = random.Random(seed)
    rows = []
    for depth in depths:
        key = str(rng.randint(100000, 999999))
        hay = text_ids[offset: offset + haystack_tokens]
        ids, where = build_needle(tok, hay, depth, key)
        runs = make_runs()
        res = stream_quality(model, ids, runs, chunk=chunk, desc=f"needle depth {depth}")
        ref_correct = None
        for label in runs:
            correct = res[label]["correct"][where]
            rows.append({"label": label, "depth": depth, "key": key, "tokens": int(ids.numel()),
                         "digit_acc": float(correct.mean()), "exact": bool(correct.all()),
                         "answer_nll": float(res[label]["nll"][where].mean()),
                         "answer_nll_full": float(res[label]["nll_ref"][where].mean())})
    return rows
