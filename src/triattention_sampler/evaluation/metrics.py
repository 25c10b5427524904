"""Per-token comparison of a compressed run against the full-cache run of the same text."""
from typing import Dict

import torch


def token_metrics(logp_ref: torch.Tensor, logp: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``logp_ref``/``logp`` ``[T, V]`` log-probabilities (full cache / compressed) of the next token,
    ``targets [T]`` the actual next tokens. Returns per-token ``nll`` (compressed), ``nll_ref``,
    ``kl`` = KL(full || compressed) in nats, ``agree`` (top-1 of both equal, 0/1) and ``correct``
    (compressed top-1 equals the actual next token, 0/1)."""
    logp_ref, logp = logp_ref.float(), logp.float()
    nll = -logp.gather(-1, targets[:, None])[:, 0]
    nll_ref = -logp_ref.gather(-1, targets[:, None])[:, 0]
    kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1).clamp_min(0.0)
    agree = (logp_ref.argmax(-1) == logp.argmax(-1)).float()
    correct = (logp.argmax(-1) == targets).float()
    return {"nll": nll, "nll_ref": nll_ref, "kl": kl, "agree": agree, "correct": correct}


def summarize(per_token: Dict[str, torch.Tensor], start: int = 0) -> Dict[str, float]:
    """Means over tokens ``start:``: ``nll``, ``nll_ref``, ``kl``, ``top1`` (agreement), ``ppl``, ``tokens``."""
    sl = {k: v[start:].double() for k, v in per_token.items()}
    n = int(sl["kl"].numel())
    if n == 0:
        return {"tokens": 0}
    out = {"tokens": n, "nll": float(sl["nll"].mean()), "nll_ref": float(sl["nll_ref"].mean()),
           "kl": float(sl["kl"].mean()), "top1": float(sl["agree"].mean())}
    out["ppl"] = float(torch.exp(torch.tensor(out["nll"])))
    out["ppl_ref"] = float(torch.exp(torch.tensor(out["nll_ref"])))
    return out


def paired_difference(a: torch.Tensor, b: torch.Tensor, start: int = 0, block: int = 64) -> Dict[str, float]:
    """Mean of ``a - b`` over tokens ``start:`` with its standard error by batch means.

    Per-token differences of two methods on the same text are autocorrelated (a round changes the cache
    for the next ``interval`` tokens), so the SE comes from the means of consecutive ``block``-token blocks
    (block = the round interval), not from the tokens as if independent."""
    d = (a[start:].double() - b[start:].double())
    blocks = d.numel() // block
    if blocks < 2:
        return {"diff": float(d.mean()) if d.numel() else float("nan"), "se": float("nan"), "blocks": blocks}
    means = d[: blocks * block].view(blocks, block).mean(1)
    return {"diff": float(d.mean()), "se": float(means.std() / blocks ** 0.5), "blocks": blocks}
