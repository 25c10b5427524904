"""The one place that decides compiled op vs pure-torch reference, per call, by device.

Inside a kernel-builder build the generated ``_ops`` module sits next to this file; in the source
tree (and the pip-installed sampler) it does not, and every op runs the reference.
"""
import functools
import importlib.util
from typing import Sequence

import torch

from . import reference_ops

if importlib.util.find_spec(__package__ + "._ops") is not None:
    from ._ops import add_op_namespace_prefix, ops
else:
    add_op_namespace_prefix = None
    ops = None

_DEVICE_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def compiled_available(device: torch.device = torch.device("cpu"), op: str = "score_keys") -> bool:
    """True when the compiled library registers ``op`` for ``device``'s dispatch key (ROCm = CUDA)."""
    return _has_kernel(torch.device(device).type, op)


@functools.lru_cache(maxsize=None)
def _has_kernel(device_type: str, op: str) -> bool:
    if ops is None:
        return False
    key = _DEVICE_KEYS.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(add_op_namespace_prefix(op), key)


def backend_name(device: torch.device = torch.device("cpu")) -> str:
    return "compiled" if compiled_available(device) else "reference"


def score_keys(keys, trig_weights, norm_weights, rotary_dim: int, interleaved: bool) -> torch.Tensor:
    if compiled_available(keys.device, "score_keys"):
        b, hq, n = keys.shape[0], trig_weights.shape[1], keys.shape[2]
        out = torch.empty(b, hq, n, device=keys.device, dtype=torch.float32)
        ops.score_keys(out, keys, trig_weights.contiguous(), norm_weights.contiguous(), rotary_dim, interleaved)
        return out
    return reference_ops.score_keys(keys, trig_weights, norm_weights, rotary_dim, interleaved)


def zscore_group_reduce(scores, candidates, group_size: int, use_max: bool) -> torch.Tensor:
    if compiled_available(scores.device, "zscore_group_reduce"):
        b, hq, n = scores.shape
        out = torch.empty(b, hq // group_size, n, device=scores.device, dtype=torch.float32)
        ops.zscore_group_reduce(out, scores.contiguous(), candidates.contiguous(), group_size, use_max)
        return out
    return reference_ops.zscore_group_reduce(scores, candidates, group_size, use_max)


def select_topk(scores, k: int) -> torch.Tensor:
    if compiled_available(scores.device, "select_topk"):
        out = torch.empty(scores.shape[0], k, device=scores.device, dtype=torch.int64)
        ops.select_topk(out, scores.float().contiguous(), k)
        return out
    return reference_ops.select_topk(scores, k)


def compact_(caches: Sequence[torch.Tensor], indices: torch.Tensor) -> None:
    if caches and compiled_available(caches[0].device, "compact_"):
        ops.compact_(list(caches), indices.contiguous())
        return
    reference_ops.compact_(caches, indices)
