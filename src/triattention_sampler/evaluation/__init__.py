"""Evaluation harness: teacher-forced quality under compression, needle retrieval, speed/memory, plots."""
from .metrics import token_metrics, summarize
from .quality import build_cache, stream_quality

__all__ = ["token_metrics", "summarize", "build_cache", "stream_quality"]
