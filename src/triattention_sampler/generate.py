"""One call: generate with a TriAttention cache on any supported transformers model."""
from typing import Optional, Union

import torch

from .attention import use_triattention_attention
from .cache import TriAttentionCache
from .calibration import CalibrationStats
from .config import TriAttentionConfig


def generate(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
             config: Optional[TriAttentionConfig] = None,
             calibration: Union[None, str, CalibrationStats] = None,
             return_cache: bool = False, budget: Optional[int] = None, interval: Optional[int] = None,
             **generate_kwargs):
    """``model.generate`` with a fresh :class:`TriAttentionCache` and the triattention attention function.

    ``budget``/``interval`` override ``config`` (default :class:`TriAttentionConfig`); other keyword
    arguments go to ``model.generate`` (``max_new_tokens``, ``do_sample``, ``temperature``, ...).
    Returns the generated ids, or ``(ids, cache)`` with ``return_cache=True``.
    """
    settings = (config or TriAttentionConfig()).to_dict()
    if budget is not None:
        settings["budget"] = budget
    if interval is not None:
        settings["interval"] = interval
    cache = TriAttentionCache(model, TriAttentionConfig(**settings), calibration)
    with use_triattention_attention(model):
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                             **generate_kwargs)
    return (out, cache) if return_cache else out
