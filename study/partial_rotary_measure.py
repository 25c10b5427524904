"""Partial rotary: does scoring the non-rotated dims with the query mean (``q_pass_mean``) help?

For each pruned layer: statistics = online means over a prompt of ``T`` tokens; keys = the ``T`` cached
post-RoPE keys; oracle = attention mass the next ``F`` real queries put on each of those keys (softmax over
everything they see, averaged over the future queries and the query heads of the KV head). TriAttention
scores are computed twice, with the pass-through dims scored by ``q_pass_mean`` (what the sampler does)
and with them ignored, and compared with the oracle: Spearman correlation and the share of oracle mass
kept by the top ``k`` keys.

Models: tiny random Phi3 (half pairing) and GLM (interleaved) with partial_rotary_factor 0.5, and, when
the SmolLM2 weights are installed, SmolLM2-135M's trained weights put into a Phi3 shell that rotates only
half of each head (a different model, but with trained activation statistics: its non-rotated dims carry
real query/key concentration). Writes results/partial_rotary.json and prints a Markdown table.

    .venv/bin/python study/partial_rotary_measure.py [--T 384 --F 128 --k 64]
"""
import argparse
import json
import os
import sys

import torch
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface

import triattention_sampler as ts
from triattention import build_geometric_offsets, reduce_query_heads, round_weights, score_post_rope_keys
from triattention_sampler.attention import triattention_attention, triattention_mask

RECEIVED = {}


def _capture(module, query, key, value, attention_mask, **kwargs):
    RECEIVED[module.layer_idx] = (query.detach().clone(), kwargs.get("scaling"))
    return triattention_attention(module, query, key, value, attention_mask, **kwargs)


def spearman(a, b):
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@torch.no_grad()
def measure(model, ids, T, F, k):
    AttentionInterface.register("triattention_capture", _capture)
    AttentionMaskInterface.register("triattention_capture", triattention_mask)
    model.set_attn_implementation("triattention_capture")
    cache = ts.TriAttentionCache(model, budget=10 ** 6)
    model(input_ids=ids[:, :T], past_key_values=cache, use_cache=True)
    model(input_ids=ids[:, T:T + F], past_key_values=cache, use_cache=True)
    info, cfg = cache.info, cache.config
    offsets = build_geometric_offsets(cfg.offset_max_length, torch.device("cpu"))
    rows = {"with_q_pass": [], "ignore_pass": []}
    for idx in info.pruned_layers:
        layer, rope = cache.layers[idx], info.plans[idx].rope
        keys_all = layer.keys[:, :, :T + F].float()
        query, scaling = RECEIVED[idx]
        hq, hkv = query.shape[1], keys_all.shape[1]
        q = query.float().reshape(1, hkv, hq // hkv * F, -1)
        logits = q @ keys_all.transpose(-1, -2) * scaling
        causal = torch.ones(F, T + F, dtype=torch.bool).tril(T).repeat(hq // hkv, 1)
        probs = logits.masked_fill(~causal, float("-inf")).softmax(-1)
        oracle = probs[..., :T].mean(-2)  # [1, Hkv, T]
        stats = {name: v[:, 0] for name, v in cache._online[idx].means().items()}
        for variant, q_pass in (("with_q_pass", stats["q_pass_mean"]), ("ignore_pass", None)):
            w, c = round_weights(stats["q_mean_real"], stats["q_mean_imag"], stats["q_abs_mean"], rope.omega,
                                 torch.tensor([T]), offsets, head_dim=rope.head_dim, style=rope.style,
                                 rotary_dim=rope.rotary_dim, freq_scale_sq=rope.freq_scale_sq(), q_pass_mean=q_pass)
            s = score_post_rope_keys(keys_all[:, :, :T].contiguous(), w, c, style=rope.style,
                                     rotary_dim=rope.rotary_dim)
            r = reduce_query_heads(s, torch.ones(1, hkv, T, dtype=torch.bool), group_aggregation="max")
            for h in range(hkv):
                top = r[0, h].topk(k).indices
                rows[variant].append((spearman(r[0, h], oracle[0, h]),
                                      float(oracle[0, h, top].sum() / oracle[0, h].sum())))
    out = {}
    for variant, vals in rows.items():
        t = torch.tensor(vals)
        out[variant] = {"spearman": round(float(t[:, 0].mean()), 4), f"top{k}_mass": round(float(t[:, 1].mean()), 4),
                        "heads": len(vals)}
    return out


def tiny(model_type, **extra):
    settings = dict(vocab_size=128, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=512, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2, partial_rotary_factor=0.5, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings)).eval()


def smollm2_in_phi3_shell():
    """SmolLM2-135M's trained weights in a Phi3 (fused qkv, partial rotary 0.5) architecture."""
    src, tok = ts.load_smollm2(attn_implementation="sdpa")
    c = src.config
    cfg = AutoConfig.for_model(
        "phi3", vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_parameters["rope_theta"],
                         "partial_rotary_factor": 0.5},
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    dst = AutoModelForCausalLM.from_config(cfg).eval()
    sd = src.state_dict()
    new = {}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        new[p + "self_attn.qkv_proj.weight"] = torch.cat([sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        new[p + "self_attn.o_proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        new[p + "mlp.gate_up_proj.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
        new[p + "mlp.down_proj.weight"] = sd[p + "mlp.down_proj.weight"]
        for n in ("input_layernorm", "post_attention_layernorm"):
            new[p + n + ".weight"] = sd[p + n + ".weight"]
    new["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"]
    new["model.norm.weight"] = sd["model.norm.weight"]
    new["lm_head.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    missing, unexpected = dst.load_state_dict(new, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return dst, tok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, default=384)
    parser.add_argument("--F", type=int, default=128)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--out", default="results/partial_rotary.json")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    random_ids = torch.randint(3, 128, (1, args.T + args.F), generator=g)
    results = {}
    for name, model in (("tiny random phi3 (half)", tiny("phi3")), ("tiny random glm (interleaved)", tiny("glm", head_dim=64))):
        results[name] = measure(model, random_ids, args.T, args.F, args.k)
    if not args.skip_real:
        try:
            model, tok = smollm2_in_phi3_shell()
            from triattention_sampler.evaluation.data import load_text

            text = load_text("hamlet")[20000:60000]
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, : args.T + args.F]
            results["SmolLM2-135M weights, Phi3 shell, partial 0.5 (hamlet)"] = measure(model, ids, args.T, args.F, args.k)
        except Exception as err:  # noqa: BLE001 - weights or text missing: report the tiny models only
            print(f"real-weights measurement skipped: {err}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"T": args.T, "F": args.F, "k": args.k, "results": results}, f, indent=1)
    k = args.k
    print(f"| model | non-rotated dims | Spearman vs future attention | oracle mass kept by top {k} of {args.T} |")
    print("| --- | --- | --- | --- |")
    for name, res in results.items():
        for variant, label in (("with_q_pass", "scored with q_pass_mean"), ("ignore_pass", "ignored")):
            r = res[variant]
            print(f"| {name} | {label} | {r['spearman']:.3f} | {r[f'top{k}_mass']:.3f} |")


if __name__ == "__main__":
    main()
