"""Misuse that used to give silently wrong results or an unclear error now raises one clear error (its type, and a
message naming the field / file and the fix). Tiny random models; seconds."""
import copy
import json
import os
import pathlib

import pytest
import torch
from safetensors.torch import save_file

import triattention_sampler as ts
from triattention_sampler import CacheMisuseError, CalibrationMismatchError, UnsupportedModelError
from triattention_sampler.calibration import model_metadata
from triattention_sampler.calibration.stats_file import FORMAT

from conftest import tiny_model


def greedy(model, ids, cache, new=12, **kwargs):
    with ts.use_triattention_attention(model):
        return model.generate(input_ids=ids, past_key_values=cache, max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, **kwargs)


def prompt(n=8, seed=0):
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


def stats_for(model, **meta_overrides):
    info = ts.describe_model(model)
    shape = (info.num_layers, info.num_heads, info.rope.freq_count)
    meta = model_metadata(info, token_count=10)
    meta.update(meta_overrides)
    g = torch.Generator().manual_seed(0)
    real, imag = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    return ts.CalibrationStats(real, imag, torch.sqrt(real ** 2 + imag ** 2) + 0.5,
                               torch.zeros(info.num_layers, info.num_heads, info.head_dim - info.rope.rotary_dim), meta)


def write_raw(path, model, **tensors):
    """A calibration file written with safetensors directly (bypassing CalibrationStats' own checks)."""
    info = ts.describe_model(model)
    shape = (info.num_layers, info.num_heads, info.rope.freq_count)
    values = {"q_mean_real": torch.zeros(shape), "q_mean_imag": torch.zeros(shape), "q_abs_mean": torch.ones(shape),
              "q_pass_mean": torch.zeros(info.num_layers, info.num_heads, 0), **tensors}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in model_metadata(info).items()}
    save_file({f"triattention.{k}": v for k, v in values.items()}, str(path), metadata={**meta, "format": FORMAT})
    return path


# -- A: silent wrong results -> errors ---------------------------------------------------------------------------
def test_cache_of_another_model_with_other_rope_theta_is_refused():
    model_a, model_b = tiny_model("llama"), tiny_model("llama", rope_theta=50000.0, seed=1)
    cache = ts.TriAttentionCache(model_a, budget=16, interval=4)
    with pytest.raises(CacheMisuseError, match=r"built for another model.*TriAttentionCache\(model"):
        greedy(model_b, prompt(), cache)
    greedy(model_b, prompt(), ts.TriAttentionCache(model_b, budget=16, interval=4))  # its own cache works


def test_calibration_file_of_a_model_with_other_rope_theta_is_refused(tmp_path):
    path = tmp_path / "theta50k.safetensors"
    stats_for(tiny_model("llama", rope_theta=50000.0)).save(path)
    with pytest.raises(CalibrationMismatchError, match=r"theta50k.*rope_theta=50000.*rope_theta=10000.*calibrate"):
        ts.TriAttentionCache(tiny_model("llama"), calibration=path, budget=16)


def test_use_cache_false_is_refused_by_generate_and_by_the_attention_function(tiny_llama):
    with pytest.raises(ValueError, match="use_cache=False cannot compress.*drop use_cache=False"):
        ts.generate(tiny_llama, prompt(), budget=16, use_cache=False, max_new_tokens=4)
    cache = ts.TriAttentionCache(tiny_llama, budget=16, interval=4)
    with pytest.raises(CacheMisuseError, match="use_cache=False.*use_cache=True"):
        greedy(tiny_llama, prompt(), cache, use_cache=False)


def test_reusing_a_cache_needs_reset_or_continue_sequence(tiny_llama):
    first, second = prompt(8, seed=0), prompt(6, seed=1)
    cache = ts.TriAttentionCache(tiny_llama, budget=12, interval=4)
    out = greedy(tiny_llama, first, cache, new=10)
    assert cache.rounds > 0
    with pytest.raises(CacheMisuseError, match=r"cache\.reset\(\).*cache\.continue_sequence\(\)"):
        greedy(tiny_llama, second, cache)

    # continue_sequence(): the whole conversation as input_ids continues exactly like one long generation
    cache.continue_sequence()
    continued = greedy(tiny_llama, out, cache, new=10)
    one_go = greedy(tiny_llama, first, ts.TriAttentionCache(tiny_llama, budget=12, interval=4), new=20)
    assert torch.equal(continued, one_go)

    # reset(): a fresh start, the same tokens as a new cache
    cache.reset()
    fresh = greedy(tiny_llama, second, cache, new=10)
    assert torch.equal(fresh, greedy(tiny_llama, second, ts.TriAttentionCache(tiny_llama, budget=12, interval=4),
                                     new=10))


def test_cache_under_sdpa_is_refused_naming_set_attn_implementation():
    model = tiny_model("llama")
    cache = ts.TriAttentionCache(model, budget=16, interval=4)
    model.set_attn_implementation("sdpa")
    with pytest.raises(CacheMisuseError, match=r"attn_implementation='sdpa'.*set_attn_implementation\("
                                               r"'triattention'\)"):
        model.generate(input_ids=prompt(), past_key_values=cache, max_new_tokens=4, do_sample=False)


def test_pin_prompt_must_be_a_bool():
    with pytest.raises(TypeError, match="pin_prompt must be True or False, got str 'no'"):
        ts.TriAttentionConfig(budget=16, pin_prompt="no")
    with pytest.raises(TypeError, match="pin_prompt"):
        ts.TriAttentionCache(tiny_model("llama"), budget=16, pin_prompt="no")


def test_negative_q_abs_mean_is_refused_at_load_naming_the_file(tmp_path):
    model = tiny_model("llama")
    info = ts.describe_model(model)
    shape = (info.num_layers, info.num_heads, info.rope.freq_count)
    path = write_raw(tmp_path / "negative.safetensors", model, q_abs_mean=-torch.ones(shape))
    with pytest.raises(CalibrationMismatchError, match=r"negative\.safetensors.*q_abs_mean has negative entries.*"
                                                       r"triattention calibrate"):
        ts.CalibrationStats.load(path)


# -- B: unclear errors -> one clear error each ------------------------------------------------------------------
def test_calibration_accepts_a_pathlib_path_and_names_a_missing_one(tiny_llama, tmp_path):
    path = tmp_path / "calib.safetensors"
    stats_for(tiny_llama).save(path)
    cache = ts.TriAttentionCache(tiny_llama, calibration=path, budget=8, interval=4)
    greedy(tiny_llama, prompt(6), cache, new=12)
    assert cache.summary()["calibration"] == "offline" and cache.rounds > 0
    assert cache.calibration.metadata["path"] == str(path)
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match=r"calibration file not found: .*nowhere\.safetensors.*calibrate"):
        ts.TriAttentionCache(tiny_llama, calibration=missing, budget=16)


def test_a_dict_config_is_accepted(tiny_llama):
    cache = ts.TriAttentionCache(tiny_llama, {"budget": 64, "interval": 8})
    assert (cache.config.budget, cache.config.interval) == (64, 8)
    greedy(tiny_llama, prompt(), cache, new=4)
    assert cache.get_seq_length() == 8 + 4 - 1


def test_config_fields_are_named_in_type_errors():
    with pytest.raises(TypeError, match="budget must be an integer, got str 'a'"):
        ts.preset("paper", budget="a")
    with pytest.raises(TypeError, match="interval must be an integer, got float 1.5"):
        ts.TriAttentionConfig(interval=1.5)
    with pytest.raises(TypeError, match=r"unknown TriAttentionConfig setting 'budgett'; the settings are budget, "):
        ts.preset("recommended", budgett=64)


def _empty(path):
    path.write_bytes(b"")


def _random_bytes(path):
    path.write_bytes(os.urandom(4096))


def _truncated(path, model):
    stats_for(model).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _directory(path):
    path.mkdir()


@pytest.mark.parametrize("name, make", [
    ("empty.safetensors", _empty), ("random.bin", _random_bytes), ("random.pt", _random_bytes),
    ("truncated.safetensors", _truncated), ("folder.safetensors", _directory)])
def test_unreadable_calibration_files_are_refused_naming_the_path(tiny_llama, tmp_path, name, make):
    path = tmp_path / name
    make(path, tiny_llama) if make is _truncated else make(path)
    for load in (ts.CalibrationStats.load, lambda p: ts.TriAttentionCache(tiny_llama, calibration=p, budget=16)):
        with pytest.raises(CalibrationMismatchError) as err:
            load(path)
        message = str(err.value)
        assert str(path) in message and "\n" not in message and "calibrate" in message


def test_authors_pt_without_statistics_is_refused(tmp_path):
    entry = {"q_mean_real": torch.zeros(8), "q_mean_imag": torch.zeros(8), "q_abs_mean": torch.ones(8)}
    torch.save({"metadata": {"head_dim": 16, "sampled_heads": [[0, 0]]}, "stats": {}}, tmp_path / "empty.pt")
    with pytest.raises(CalibrationMismatchError, match=r"empty\.pt holds no statistics.*calibrate"):
        ts.CalibrationStats.load(tmp_path / "empty.pt")
    torch.save({"metadata": {"head_dim": 16, "sampled_heads": [[0, 0], [1, 2]]}, "stats": {"layer00_head00": entry}},
               tmp_path / "gap.pt")
    with pytest.raises(CalibrationMismatchError, match=r"gap\.pt: sampled head \(1, 2\) has no statistics"):
        ts.CalibrationStats.load(tmp_path / "gap.pt")
    partial = {k: v for k, v in entry.items() if k != "q_abs_mean"}
    torch.save({"metadata": {"head_dim": 16, "sampled_heads": [[0, 0]]}, "stats": {"layer00_head00": partial}},
               tmp_path / "partial.pt")
    with pytest.raises(CalibrationMismatchError, match=r"partial\.pt: sampled head \(0, 0\) has no statistics"):
        ts.CalibrationStats.load(tmp_path / "partial.pt")


def test_q_pass_mean_of_the_wrong_width_is_refused_at_load(tmp_path):
    model = tiny_model("llama")  # full rotary: no unrotated dims, so q_pass_mean must have width 0
    path = write_raw(tmp_path / "wide.safetensors", model, q_pass_mean=torch.zeros(2, 4, 3))
    with pytest.raises(CalibrationMismatchError, match=r"wide\.safetensors: q_pass_mean has width 3.*= 0 unrotated"):
        ts.CalibrationStats.load(path)
    # a partial-rotary model (phi3: half the dims rotated) records the unrotated dims' means and checks the width
    phi = tiny_model("phi3", partial_rotary_factor=0.5)
    stats = stats_for(phi)
    assert stats.q_pass_mean.shape[-1] == 8
    stats.save(tmp_path / "phi.safetensors")
    ts.TriAttentionCache(phi, calibration=tmp_path / "phi.safetensors", budget=16)
    path = write_raw(tmp_path / "phi_wide.safetensors", phi, q_pass_mean=torch.zeros(2, 4, 5))
    with pytest.raises(CalibrationMismatchError, match=r"q_pass_mean has width 5.*= 8 unrotated"):
        ts.CalibrationStats.load(path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rope", [dict(rope_theta=100000.0), dict(rope_theta=500000.0, rope_scaling={
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64})], ids=["smollm2-like", "llama3-scaled"])
def test_fp32_calibration_loads_on_the_same_model_cast_to_half(tmp_path, dtype, rope):
    def model(theta_factor=1.0):  # head_dim 128; a fresh rope_scaling dict each time (the config adds to it)
        settings = copy.deepcopy(rope)
        settings["rope_theta"] *= theta_factor
        return tiny_model("llama", hidden_size=256, num_attention_heads=2, num_key_value_heads=1, **settings)

    path = tmp_path / "fp32.safetensors"
    stats_for(model()).save(path)
    half = model().to(dtype)
    cache = ts.TriAttentionCache(half, calibration=path, budget=8, interval=4)
    out = greedy(half, prompt(6), cache, new=12)
    assert out.shape == (1, 18) and cache.rounds > 0 and cache.summary()["calibration"] == "offline"
    other = model(theta_factor=2.0).to(dtype)
    with pytest.raises(CalibrationMismatchError, match="rope_theta"):  # the check itself stays on
        ts.TriAttentionCache(other, calibration=path, budget=8)


def test_a_mamba_config_or_model_is_unsupported_not_an_attribute_error():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mamba", vocab_size=128, hidden_size=64, num_hidden_layers=2)
    for target in (config, AutoModelForCausalLM.from_config(config)):
        with pytest.raises(UnsupportedModelError, match="'mamba'.*TriAttention compresses|'mamba' keeps recurrent"):
            ts.TriAttentionCache(target, budget=16)
        with pytest.raises(UnsupportedModelError, match="mamba"):
            ts.describe_model(target)
    llama_config = tiny_model("llama").config
    with pytest.raises(TypeError, match=r"got its config \(LlamaConfig\).*AutoModelForCausalLM\.from_config"):
        ts.TriAttentionCache(llama_config, budget=16)
    with pytest.raises(TypeError, match="expected a loaded transformers model, got str"):
        ts.describe_model("HuggingFaceTB/SmolLM2-135M")


def test_a_cache_for_another_layer_count_is_refused():
    two, four = tiny_model("llama"), tiny_model("llama", num_hidden_layers=4)
    with pytest.raises(CacheMisuseError, match="built for another model"):  # caught by the module check
        greedy(four, prompt(), ts.TriAttentionCache(two, budget=16, interval=4))
    # built from model facts alone (no modules to compare): the layer index gives it away
    cache = ts.TriAttentionCache(model_info=ts.describe_model(two), budget=16, interval=4)
    with pytest.raises(CacheMisuseError, match=r"2 layers but received layer 2.*TriAttentionCache\(model"):
        greedy(four, prompt(), cache)


def test_calibrate_arguments_are_checked_by_name(tiny_llama):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, **{f"w{i}": i for i in range(1, 128)}}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    text = " ".join(f"w{i % 120 + 3}" for i in range(40))
    with pytest.raises(ValueError, match="chunk_tokens must be an integer >= 2, got 1"):
        ts.calibrate(tiny_llama, tok, text, chunk_tokens=1, progress=False)
    with pytest.raises(ValueError, match="max_tokens must be None or an integer >= 2, got 0"):
        ts.calibrate(tiny_llama, tok, text, max_tokens=0, progress=False)
    with pytest.raises(TypeError, match=r"text must be the calibration text \(str\), got PosixPath"):
        ts.calibrate(tiny_llama, tok, pathlib.Path("corpus.txt"), progress=False)
    with pytest.raises(ValueError, match="calibration text has 0 tokens"):
        ts.calibrate(tiny_llama, tok, "", progress=False)
    stats = ts.calibrate(tiny_llama, tok, text, chunk_tokens=16, progress=False)
    assert stats.token_count == 40 and stats.q_mean_real.shape == (2, 4, 8)
    ts.TriAttentionCache(tiny_llama, calibration=stats, budget=16)  # what it made fits the model


# -- a cache for another shape of model, a dict with a misspelt setting ------------------------------------------
def test_a_cache_for_more_layers_than_the_model_has_is_refused():
    two, four = tiny_model("llama"), tiny_model("llama", num_hidden_layers=4)
    cache = ts.TriAttentionCache(model_info=ts.describe_model(four), budget=8, interval=4)
    with pytest.raises(CacheMisuseError, match="4 layers.*TriAttentionCache\\(model"):
        greedy(two, prompt(), cache, new=20)


def test_a_dict_config_with_an_unknown_key_names_the_valid_settings(tiny_llama):
    with pytest.raises(TypeError, match="unknown TriAttentionConfig setting 'budgett'; the settings are budget"):
        ts.TriAttentionCache(tiny_llama, {"budgett": 64})
