"""TriAttention sampler: long generation with transformers inside a fixed KV budget.

Importing registers ``attn_implementation="triattention"`` with transformers.
"""
from .attention import register, triattention_attention, use_triattention_attention
from .cache import TriAttentionCache, TriAttentionLayer
from .calibration import CalibrationMismatchError, CalibrationStats, calibrate
from .config import TriAttentionConfig, preset
from .generate import generate
from .kernel_loading import load_ops
from .models import load_smollm2
from .policies import TriAttentionPolicy, make_policy
from .rope_spec import UnsupportedModelError, describe_model

register()

__all__ = [
    "TriAttentionCache",
    "TriAttentionLayer",
    "TriAttentionConfig",
    "TriAttentionPolicy",
    "make_policy",
    "CalibrationStats",
    "CalibrationMismatchError",
    "UnsupportedModelError",
    "calibrate",
    "describe_model",
    "generate",
    "load_ops",
    "load_smollm2",
    "preset",
    "register",
    "triattention_attention",
    "use_triattention_attention",
]
