"""The flag alone: with ``attn_implementation="triattention"``, plain ``model.generate(...)`` (and ``pipeline``)
compresses, with the settings :func:`configure` stored on the model's config (defaults: the recommended setting,
budget 2048, interval 128).

transformers gives an attention implementation no hook into cache creation: ``generate`` builds a ``DynamicCache``
itself. Its layers are a public list (a ``Cache`` is "mostly a list of layers"), so when the triattention mask
function runs for the first forward of an empty transformers cache, the cache is given TriAttention layers
(:meth:`TriAttentionCache.adopt`) before anything is stored. The mask function finds that cache in its caller,
``transformers.masking_utils``' mask builder, whose ``past_key_values`` argument it is. A ``TriAttentionCache`` passed
explicitly is used as is.
"""
import os
import sys
from typing import Optional, Union

import torch
from transformers.cache_utils import Cache

from .attention import NAME, register, set_mask_hook
from .cache import TriAttentionCache
from .cache.layer import TriAttentionLayer
from .config import PRESETS
from .generate import build_cache
from .scorers.registry import DEFAULT_METHOD, PRESET_METHODS, lookup, resolve

SETTINGS_KEY = "triattention"  # where configure() stores the settings: saved with save_pretrained
DEFAULT = {"method": DEFAULT_METHOD, "settings": {}, "calibration": None}


def configure(model, preset: Optional[str] = "recommended", *, method: Optional[str] = None,
              calibration: Union[None, str, "os.PathLike"] = None, **settings) -> dict:
    """Set what plain ``model.generate`` does under ``attn_implementation="triattention"`` (and switch the model to it).

    Args:
        preset: ``recommended`` (default), ``paper`` or ``quality``; or give ``method`` (any registry spec, e.g.
            ``"snapkv[kernel_size=1]"``) instead.
        calibration: path of an offline statistics file (``None``: online statistics from each prompt).
        settings: :class:`TriAttentionConfig` fields (``budget``, ``interval``, ``prefill_chunk``, ...).
    Returns the stored settings (also on ``model.config.triattention``, so ``save_pretrained`` keeps them).
    """
    if method is None:
        if preset not in PRESET_METHODS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)} (or pass method=...)")
        method = PRESET_METHODS[preset]
    elif preset not in (None, "recommended"):
        raise ValueError("pass either preset or method, not both")
    lookup(method)
    _, config = resolve(method, **settings)  # refuses unknown or ill-typed settings now, naming them
    if calibration is not None:
        if not isinstance(calibration, (str, os.PathLike)):
            raise TypeError("configure() stores a calibration file path (str or os.PathLike); save CalibrationStats "
                            "with .save(path) first")
        calibration = os.fspath(calibration)
        if not os.path.isfile(calibration):
            raise FileNotFoundError(f"calibration file not found: {calibration}")
    stored = {"method": method, "settings": dict(settings), "calibration": calibration}
    setattr(model.config, SETTINGS_KEY, stored)
    # generate reads long prompts in these chunks (rounds between them keep the cache within budget + chunk)
    model.generation_config.prefill_chunk_size = config.prefill_chunk or None
    register()
    if model.config._attn_implementation != NAME:
        model.set_attn_implementation(NAME)
    return stored


def settings_of(model) -> dict:
    """What plain ``generate`` uses for ``model``: :func:`configure`'s settings, else the defaults."""
    return getattr(model.config, SETTINGS_KEY, None) or DEFAULT


def _caller_cache_and_model():
    """The ``past_key_values`` of the mask builder that called the mask function, and the model running it."""
    frame = sys._getframe(3)  # this <- the hook <- triattention_mask <- transformers' mask builder
    cache = model = None
    for _ in range(6):
        if frame is None:
            break
        local = frame.f_locals
        if cache is None:
            cache = local.get("past_key_values")
        owner = local.get("self")
        if cache is not None and getattr(owner, "config", None) is not None and hasattr(owner, "modules"):
            model = owner
            break
        frame = frame.f_back
    return cache, model


@torch.compiler.disable  # reads the caller's frame: never traced
def adopt_generation_cache() -> None:
    """Called by the triattention mask function at each forward: an empty transformers cache becomes TriAttention's."""
    cache, model = _caller_cache_and_model()
    if model is None or not isinstance(cache, Cache) or isinstance(cache, TriAttentionCache):
        return
    if (cache.layers and isinstance(cache.layers[0], TriAttentionLayer)) or cache.get_seq_length() != 0:
        return  # already ours, or a cache that holds tokens from before (left as it is)
    chosen = settings_of(model)
    controller = build_cache(model, chosen["method"], calibration=chosen["calibration"], **chosen["settings"])
    controller.adopt(cache)


set_mask_hook(adopt_generation_cache)
