"""One call: a cache for a method name, and ``generate`` with it on any supported transformers model."""
from collections.abc import Mapping
from typing import Optional, Union

import torch

from .attention import use_triattention_attention
from .cache import TriAttentionCache
from .calibration import CalibrationStats
from .config import TriAttentionConfig
from .scorers.registry import lookup, resolve


def build_cache(model, method: str = "triattention", budget: Optional[int] = None, interval: Optional[int] = None,
                *, calibration: Union[None, str, CalibrationStats] = None, model_info=None, seed: int = 0,
                **settings) -> TriAttentionCache:
    """A cache for a method spec (``name`` or ``name[key=value,...]``, see :mod:`.scorers.registry`).

    ``calibration`` goes to methods that take a file (``triattention``, the presets, the ``tri-*`` ablations);
    ``triattention-online`` and the baselines never use it. ``settings`` (e.g. CLI flags) win over what the method
    implies (StreamingLLM's 4 sinks); settings written in the spec win over both."""
    _, method_info, _ = lookup(method)
    if interval is not None:
        settings["interval"] = interval
    scorer, config = resolve(method, budget, seed=seed, **settings)
    if method_info.calibration != "optional":
        calibration = None
    return TriAttentionCache(model, config, calibration, model_info=model_info, scorer=scorer)


def _split_inputs(input_ids, attention_mask):
    """``input_ids`` as a tensor, or what a tokenizer / ``apply_chat_template(..., return_dict=True)`` returns."""
    if isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise TypeError(f"generate got a mapping without 'input_ids' (keys: {sorted(input_ids)})")
        if attention_mask is None:
            attention_mask = input_ids.get("attention_mask")
        input_ids = input_ids["input_ids"]
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a tensor [batch, tokens] or a tokenizer's output (BatchEncoding), got "
                        f"{type(input_ids).__name__}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = attention_mask[None] if attention_mask is not None and attention_mask.dim() == 1 else \
            attention_mask
    return input_ids, attention_mask


def generate(model, input_ids, attention_mask: Optional[torch.Tensor] = None, *,
             config: Optional[TriAttentionConfig] = None, method: Optional[str] = None,
             calibration: Union[None, str, CalibrationStats] = None, return_cache: bool = False,
             budget: Optional[int] = None, interval: Optional[int] = None, **generate_kwargs):
    """``model.generate`` with a fresh :class:`TriAttentionCache` and the triattention attention function.

    ``input_ids`` may be a tensor or what the tokenizer returns (``BatchEncoding``). Settings come from
    ``config`` (default :class:`TriAttentionConfig`) or a ``method`` spec; keyword settings (``budget=``,
    ``interval=``, ``prefill_chunk=``, any :class:`TriAttentionConfig` field) override either. Other keyword
    arguments go to ``model.generate`` (``max_new_tokens``, ``do_sample``, ``streamer``, ...).
    Returns the generated ids, or ``(ids, cache)`` with ``return_cache=True``.
    """
    input_ids, attention_mask = _split_inputs(input_ids, attention_mask)
    settings = {k: generate_kwargs.pop(k) for k in list(generate_kwargs) if k in TriAttentionConfig.field_names()}
    if budget is not None:
        settings["budget"] = budget
    if interval is not None:
        settings["interval"] = interval
    if generate_kwargs.get("use_cache") is False:
        raise ValueError("use_cache=False cannot compress anything (every step re-reads the whole sequence): "
                         "drop use_cache=False")
    if "past_key_values" in generate_kwargs:
        raise ValueError("triattention_sampler.generate builds its own cache: call model.generate(..., "
                         "past_key_values=cache) to use yours")
    if method is not None:
        if config is not None:
            raise ValueError("pass either config or method, not both")
        cache = build_cache(model, method, calibration=calibration, **settings)
    else:
        cache = TriAttentionCache(model, TriAttentionConfig(**{**(config or TriAttentionConfig()).to_dict(),
                                                               **settings}), calibration)
    chunk = generate_kwargs.pop("prefill_chunk_size", None) or cache.config.prefill_chunk
    cache.expected_prompt = (attention_mask.sum(-1).tolist() if attention_mask is not None
                             else [input_ids.shape[1]] * input_ids.shape[0])
    with use_triattention_attention(model):
        if chunk and input_ids.shape[1] > chunk:
            prefill_in_chunks(model, cache, input_ids, attention_mask, chunk)
            cache.continue_sequence()
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                             **generate_kwargs)
    return (out, cache) if return_cache else out


@torch.no_grad()
def prefill_in_chunks(model, cache, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], chunk: int):
    """Read all but the last prompt token in ``chunk``-token forwards, eagerly (rounds between chunks keep each layer
    within ``budget + max(interval, chunk)``); ``generate`` then continues from the cache with the last token, so
    only its decode step is ever compiled."""
    n = input_ids.shape[1] - 1
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # what generate gives left-padded rows
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        model(input_ids=input_ids[:, start:end], attention_mask=attention_mask[:, :end],
              position_ids=positions[:, start:end], past_key_values=cache, use_cache=True, logits_to_keep=1)
