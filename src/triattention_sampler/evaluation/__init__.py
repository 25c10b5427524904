"""Evaluation harness: teacher-forced quality under compression, needle retrieval, speed/memory, plots."""
from .cost import scoring_cost
from .metrics import paired_difference, summarize, token_metrics
from .quality import stream_quality

__all__ = ["token_metrics", "summarize", "paired_difference", "scoring_cost", "stream_quality"]
