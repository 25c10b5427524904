"""``attn_implementation="triattention"``: attention over the compacted cache (:mod:`.function`) and its SDPA
calls and masks (:mod:`.sdpa`). Importing the sampler registers the name with transformers."""
import contextlib

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .function import NAME, set_mask_hook, triattention_attention, triattention_mask


def register() -> None:
    """Make ``attn_implementation="triattention"`` available (idempotent; done on import of the sampler)."""
    AttentionInterface.register(NAME, triattention_attention)
    AttentionMaskInterface.register(NAME, triattention_mask)


@contextlib.contextmanager
def use_triattention_attention(model):
    """Temporarily switch ``model`` to the triattention attention function."""
    register()
    previous = model.config._attn_implementation
    if previous != NAME:
        model.set_attn_implementation(NAME)
    try:
        yield model
    finally:
        if previous != NAME:
            model.set_attn_implementation(previous)


__all__ = ["NAME", "register", "set_mask_hook", "triattention_attention", "triattention_mask",
           "use_triattention_attention"]
