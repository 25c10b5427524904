"""Shared fixtures: the real SmolLM2 model once per session, tiny random models built from config."""
import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real default model, fp32, attn_implementation='triattention'."""
    from triattention_sampler import load_smollm2

    try:
        return load_smollm2()
    except FileNotFoundError as err:
        pytest.skip(f"SmolLM2 weights unavailable: {err}")


def tiny_model(model_type: str = "llama", attn: str = "triattention", seed: int = 0, **overrides):
    """A 2-layer randomly initialised model (mechanics only: random weights have no Q/K concentration)."""
    import triattention_sampler  # noqa: F401  (registers the attention implementation)
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=128, max_position_embeddings=4096,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2)
    settings.update(overrides)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **settings)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")
