"""The sampler's exception types (each message names the problem and the fix)."""


class UnsupportedModelError(ValueError):
    """The model cannot be compressed with TriAttention; the message names the model type and reason."""


class CalibrationMismatchError(ValueError):
    """A calibration file cannot be used: unreadable, malformed, or made for another model."""


class CacheMisuseError(RuntimeError):
    """A TriAttentionCache was used in a way that would give silently wrong results."""
