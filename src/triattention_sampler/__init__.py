"""TriAttention sampler: long generation with transformers inside a fixed KV budget.

Importing registers ``attn_implementation="triattention"`` with transformers.
"""
from .attention import register, triattention_attention, use_triattention_attention
from .cache import TriAttentionCache, TriAttentionLayer
from .calibration import CalibrationStats
from .calibration.procedure import calibrate
from .config import TriAttentionConfig, preset
from .errors import CacheMisuseError, CalibrationMismatchError, UnsupportedModelError
from .flag import configure
from .generate import build_cache, generate
from .kernel_loading import load_ops
from .model_info import describe_model
from .models import load_smollm2
from .scorers import Scorer, TriAttentionScorer

register()

__all__ = [
    "TriAttentionCache",
    "TriAttentionLayer",
    "TriAttentionConfig",
    "Scorer",
    "TriAttentionScorer",
    "CalibrationStats",
    "CacheMisuseError",
    "CalibrationMismatchError",
    "UnsupportedModelError",
    "build_cache",
    "calibrate",
    "configure",
    "describe_model",
    "generate",
    "load_ops",
    "load_smollm2",
    "preset",
    "register",
    "triattention_attention",
    "use_triattention_attention",
]
