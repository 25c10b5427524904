"""The flag alone: attn_implementation="triattention" makes plain model.generate and pipeline compress, with the
settings ts.configure stores (defaults otherwise); an explicit past_key_values wins (tiny random models)."""
import json

import pytest
import torch

import triattention_sampler as ts
from triattention_sampler.cache import active_cache

from conftest import tiny_model

NEW = 2400


def watch(model):
    """Record the most slots any layer holds after every forward (of whatever cache is active)."""
    held = []
    handle = model.model.layers[-1].register_forward_hook(
        lambda *a: held.append(max(active_cache().physical_lengths())))
    return held, handle


def generate_plain(model, ids, **kw):
    held, handle = watch(model)
    try:
        out = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                             return_dict_in_generate=True, **kw)
    finally:
        handle.remove()
    return out, held


def test_plain_generate_compresses_with_the_defaults():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(0))
    out, held = generate_plain(model, ids)
    cache = out.past_key_values
    owner = cache.layers[0].owner
    assert owner.config.budget == 2048 and owner.config.interval == 128  # the defaults
    assert out.sequences.shape[1] == 10 + NEW and cache.get_seq_length() == 10 + NEW - 1
    assert owner.rounds >= 1 and max(held) <= 2048 + 128 + 1
    assert owner.scored_layers() == ts.build_cache(model, "triattention-recommended").scored_layers()


def test_configure_sets_what_plain_generate_uses_and_save_pretrained_keeps_it(tmp_path):
    model = tiny_model("llama", attn="sdpa")
    stored = ts.configure(model, budget=64, interval=16)  # also switches the model to the flag
    assert model.config._attn_implementation == "triattention"
    assert stored == {"method": "triattention-recommended", "settings": {"budget": 64, "interval": 16},
                      "calibration": None}
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    out, held = generate_plain(model, ids)
    assert out.past_key_values.layers[0].owner.rounds > 20 and max(held) <= 64 + 16 + 1
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["triattention"]["settings"] == {"budget": 64, "interval": 16}


def test_pipeline_compresses_with_defaults_and_with_configured_settings():
    from transformers import pipeline

    model = tiny_model("llama", vocab_size=49152)
    tok = ts.models.load_tokenizer()
    for settings, limit in (({}, 2048 + 128 + 1), ({"budget": 128, "interval": 32}, 128 + 32 + 1)):
        if settings:
            ts.configure(model, **settings)
        pipe = pipeline("text-generation", model=model, tokenizer=tok)
        held, handle = watch(model)
        try:
            text = pipe("Tell me a long story.", max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                        return_full_text=False)[0]["generated_text"]
        finally:
            handle.remove()
        assert len(held) >= NEW and max(held) <= limit and isinstance(text, str)


def test_an_explicit_cache_wins_and_results_equal_ts_generate():
    model = tiny_model("llama")
    ts.configure(model, budget=64, interval=16)
    ids = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(2))
    cache = ts.TriAttentionCache(model, budget=32, interval=8)
    out = model.generate(ids, past_key_values=cache, max_new_tokens=120, do_sample=False)
    assert cache.rounds > 5 and max(cache.physical_lengths()) <= 40
    plain = model.generate(ids, max_new_tokens=120, do_sample=False)
    same = ts.generate(model, ids, method="triattention-recommended", budget=64, interval=16, max_new_tokens=120,
                       do_sample=False)
    assert torch.equal(plain, same) and out.shape == plain.shape


def test_flag_alone_under_an_accelerate_device_map_gives_the_same_tokens():
    from accelerate import dispatch_model

    model = tiny_model("llama")
    ts.configure(model, budget=32, interval=8)
    ids = torch.randint(3, 128, (1, 8), generator=torch.Generator().manual_seed(3))
    ref = model.generate(ids, max_new_tokens=80, do_sample=False)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatched = dispatch_model(model, device_map=device_map, force_hooks=True,
                                skip_keys=model._skip_keys_device_placement)
    out = dispatched.generate(ids, max_new_tokens=80, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref) and out.past_key_values.layers[0].owner.rounds > 3


def test_configure_refuses_bad_settings():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        ts.configure(model, preset="fast")
    with pytest.raises(TypeError, match="budget must be an integer"):
        ts.configure(model, budget="big")
    with pytest.raises(FileNotFoundError, match="calibration file not found"):
        ts.configure(model, calibration="/no/such.safetensors")
    with pytest.raises(ValueError, match="unknown method"):
        ts.configure(model, method="nope")
