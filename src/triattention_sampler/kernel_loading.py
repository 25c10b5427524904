"""Where the TriAttention ops come from: the compiled hub kernel when available, else the in-repo reference.

``kernels.get_kernel(repo_id, version=1)`` is tried when the user asked for it (``TRIATTENTION_KERNEL_REPO``
or ``load_ops(repo_id=...)``) or when ``LOCAL_KERNELS`` names the repo (a local build). Offline and
Hub-less machines get the pure-torch package without a network wait. One log line says which.
"""
import logging
import os
from types import ModuleType
from typing import Dict, Optional

logger = logging.getLogger(__name__)

DEFAULT_REPO_ID = "triattention-community/triattention"
KERNEL_VERSION = 1
_LOADED: Dict[Optional[str], ModuleType] = {}


def _local_kernels_mentions(repo_id: str) -> bool:
    entries = os.environ.get("LOCAL_KERNELS", "")
    return any(part.split("=", 1)[0] == repo_id for part in entries.split(":") if "=" in part)


def load_ops(repo_id: Optional[str] = None, *, trust_remote_code: bool = True) -> ModuleType:
    """The module exposing the triattention API (``round_weights``, ``score_post_rope_keys``, ...)."""
    requested = repo_id or os.environ.get("TRIATTENTION_KERNEL_REPO")
    if requested is None and _local_kernels_mentions(DEFAULT_REPO_ID):
        requested = DEFAULT_REPO_ID
    if requested in _LOADED:
        return _LOADED[requested]
    module = None
    if requested:
        try:
            from kernels import get_kernel

            module = get_kernel(requested, version=KERNEL_VERSION, trust_remote_code=trust_remote_code)
            logger.info("triattention ops: hub kernel %s (version %d), backend %s",
                        requested, KERNEL_VERSION, module.backend_name())
        except Exception as err:  # any load failure falls back; the reason is logged
            logger.warning("triattention ops: could not load hub kernel %s (%s: %s); using the in-repo "
                           "pure-torch reference", requested, type(err).__name__, err)
    if module is None:
        import triattention as module

        if requested is None:
            logger.info("triattention ops: in-repo pure-torch reference (set TRIATTENTION_KERNEL_REPO or "
                        "LOCAL_KERNELS for the compiled kernel)")
    _LOADED[requested] = module
    return module
