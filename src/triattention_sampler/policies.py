"""Key-scoring policies a :class:`~.cache.TriAttentionCache` round can use.

A policy returns, for one pruned layer, scores ``[B, Hkv, N]`` (higher = keep; ``-inf`` = not a
candidate). Protection (sinks, pinned prompt, recent window), layer combination (granularity), exact
top-k and compaction are shared by every policy, so baselines differ from TriAttention only in scoring.
"""
import inspect

import torch

from .config import PRESETS, TriAttentionConfig


class TriAttentionPolicy:
    """TriAttention: trigonometric distance preference of the calibrated query centres + norm term."""

    name = "triattention"

    def future_offsets(self, cache, device) -> torch.Tensor:
        """Future distances a key is scored at (paper: 1, 2, 4, ..., offset_max_length)."""
        return cache.ops.build_geometric_offsets(cache.config.offset_max_length, device)

    def adjust_weights(self, trig_weights: torch.Tensor, norm_weights: torch.Tensor):
        """Hook for ablations that change the per-round weights."""
        return trig_weights, norm_weights

    def layer_scores(self, cache, idx: int, protected: torch.Tensor) -> torch.Tensor:
        return self.round_scores(cache, [idx], {idx: protected})[0]

    def round_scores(self, cache, layer_ids, protected) -> list:
        """Scores ``[B, Hkv, N]`` of every layer in ``layer_ids`` for this round.

        Layers that share a device, a RoPE and a length are scored together: one ``round_weights`` call for
        all of them (their statistics stacked along the batch axis) and one normalisation, so a round's
        fixed cost does not grow with the number of scored layers (it dominated the round on CPU)."""
        out, groups = {}, []
        for i in layer_ids:
            layer = cache.layers[i]
            for ids in groups:
                head = cache.layers[ids[0]]
                if (head.keys.device == layer.keys.device and head.length == layer.length
                        and cache.same_rotation(ids[0], i)):
                    ids.append(i)
                    break
            else:
                groups.append([i])
        for ids in groups:
            out.update(zip(ids, self._score_group(cache, ids, protected)))
        return [out[i] for i in layer_ids]

    def _score_group(self, cache, ids, protected):
        cfg, ops = cache.config, cache.ops
        first = cache.layers[ids[0]]
        rope, n, dev = first.plan.rope, first.length, first.keys.device
        b, hkv = first.keys.shape[:2]
        n_layers = len(ids)
        stats = [cache._stats_for(i, dev) for i in ids]

        def stacked(name):  # [L * B, Hq, F] (offline statistics [Hq, F] are shared by the rows)
            if stats[0].get(name) is None:
                return None
            return torch.cat([s[name].expand(b, *s[name].shape[-2:]) for s in stats])

        offsets = self.future_offsets(cache, dev)
        w, c = self.adjust_weights(*ops.round_weights(
            stacked("q_mean_real"), stacked("q_mean_imag"), stacked("q_abs_mean"), rope.omega.to(dev),
            first.next_pos.repeat(n_layers), offsets, head_dim=rope.head_dim, style=rope.style,
            rotary_dim=rope.rotary_dim, aggregation=cfg.aggregation, freq_scale_sq=rope.freq_scale_sq(dev),
            q_pass_mean=stacked("q_pass_mean"), disable_mlr=cfg.disable_mlr, disable_trig=cfg.disable_trig,
        ))
        scores = torch.cat([
            ops.score_post_rope_keys(cache.layers[i].keys[:, :, :n], w[j * b:(j + 1) * b], c[j * b:(j + 1) * b],
                                     style=rope.style, rotary_dim=rope.rotary_dim)
            for j, i in enumerate(ids)])  # [L * B, Hq, N]
        candidates = torch.cat([cache.layers[i].valid[:, :, :n] & ~protected[i] for i in ids])  # [L * B, Hkv, N]
        reduced = self._normalise(cfg, ops, scores, candidates, hkv, rope.head_dim)
        return list(reduced.split(b))

    @staticmethod
    def _normalise(cfg, ops, scores, candidates, hkv, head_dim):
        """Per-query-head normalisation, then the GQA-group reduction: ``[R, Hq, N]`` -> ``[R, Hkv, N]``."""
        rows, n = scores.shape[0], scores.shape[-1]
        if cfg.normalize_scores and cfg.score_normalization == "softmax":
            # Expected attention share of each candidate for each query head (the score is s * E[q.k]).
            logits = scores.view(rows, hkv, -1, n) * (head_dim ** -0.5)
            logits = logits.masked_fill(~candidates[:, :, None], float("-inf"))
            shares = torch.softmax(logits, dim=-1).nan_to_num(0.0)
            reduced = shares.amax(2) if cfg.group_aggregation == "max" else shares.mean(2)
            return reduced.masked_fill(~candidates, float("-inf"))
        if cfg.normalize_scores:
            return ops.reduce_query_heads(scores, candidates, group_aggregation=cfg.group_aggregation)
        grouped = scores.view(rows, hkv, -1, n)
        reduced = grouped.amax(2) if cfg.group_aggregation == "max" else grouped.mean(2)
        return reduced.masked_fill(~candidates, float("-inf"))


# -- baselines and ablations (same protection / top-k / compaction machinery, different scores) -----------------


def _candidates(cache, idx: int, protected: torch.Tensor) -> torch.Tensor:
    layer = cache.layers[idx]
    return layer.valid[:, :, : layer.length] & ~protected


class FullCachePolicy(TriAttentionPolicy):
    """No compaction: use with a budget larger than the sequence (``make_policy('full')`` callers set it).

    Scores are only ever asked for if a round runs; it then keeps the most recent tokens."""

    name = "full"

    def layer_scores(self, cache, idx, protected):
        return StreamingLLMPolicy().layer_scores(cache, idx, protected)


class StreamingLLMPolicy:
    """StreamingLLM (Xiao et al.): attention sinks (``sink_tokens``, 4 in the paper) + the most recent tokens.

    Score = RoPE position, so the newest keys win every round; sinks come from the config's protection."""

    name = "streamingllm"

    def layer_scores(self, cache, idx, protected):
        layer = cache.layers[idx]
        scores = layer.pos[:, :, : layer.length].float()
        return scores.masked_fill(~_candidates(cache, idx, protected), float("-inf"))


class RandomPolicy:
    """Uniformly random keep set (seeded; the same seed gives the same choices)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._generators = {}

    def layer_scores(self, cache, idx, protected):
        layer = cache.layers[idx]
        dev = layer.keys.device
        gen = self._generators.get(dev)
        if gen is None:
            gen = self._generators[dev] = torch.Generator(device=dev).manual_seed(self.seed)
        scores = torch.rand(layer.valid[:, :, : layer.length].shape, generator=gen, device=dev)
        return scores.masked_fill(~_candidates(cache, idx, protected), float("-inf"))


class KeyNormPolicy:
    """kvpress ``KnormPress``: keep the keys with the LOWEST L2 norm (score = -||k||)."""

    name = "knorm"

    def layer_scores(self, cache, idx, protected):
        layer = cache.layers[idx]
        scores = -layer.keys[:, :, : layer.length].float().norm(dim=-1)
        return scores.masked_fill(~_candidates(cache, idx, protected), float("-inf"))


class SnapKVPolicy:
    """SnapKV / H2O-style: attention of the last ``query_window`` post-RoPE queries to every cached key,
    averaged over the window and the query heads of each KV head, max-pooled along keys (``kernel_size``).

    The cache records the queries (``cache.query_window`` is read from this policy's attribute)."""

    name = "snapkv"

    def __init__(self, query_window: int = 32, kernel_size: int = 7):
        if query_window < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError("query_window must be >= 1 and kernel_size a positive odd number")
        self.query_window, self.kernel_size = query_window, kernel_size

    def layer_scores(self, cache, idx, protected):
        layer = cache.layers[idx]
        n = layer.length
        keys = layer.keys[:, :, :n].float()
        b, hkv, _, d = keys.shape
        candidates = _candidates(cache, idx, protected)
        recorded = cache._recent_queries.get(idx)
        if recorded is None:  # nothing seen yet: fall back to recency
            return StreamingLLMPolicy().layer_scores(cache, idx, protected)
        q, qpos, scaling = recorded
        q = q.to(keys.device).float()
        hq, w = q.shape[1], q.shape[2]
        group = hq // hkv
        scale = scaling if scaling is not None else d ** -0.5
        logits = torch.einsum("bgqwd,bgnd->bgqwn", q.view(b, hkv, group, w, d), keys) * scale
        kpos = layer.pos[:, :, :n]
        visible = layer.valid[:, :, :n][:, :, None, None, :] & (
            kpos[:, :, None, None, :] <= qpos.to(keys.device)[:, None, None, :, None])
        visible &= (qpos >= 0).to(keys.device)[:, None, None, :, None]
        logits = logits.masked_fill(~visible, float("-inf"))
        attn = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # fully masked query rows -> 0
        scores = attn.mean(dim=(2, 3))  # [B, Hkv, N]
        if self.kernel_size > 1:
            pad = self.kernel_size // 2
            scores = torch.nn.functional.max_pool1d(scores.reshape(b * hkv, 1, n), self.kernel_size, stride=1,
                                                    padding=pad).reshape(b, hkv, n)
        return scores.masked_fill(~candidates, float("-inf"))


class TriAttentionAblationPolicy(TriAttentionPolicy):
    """TriAttention with the paper's ablations that the config does not cover.

    Args:
        disable_norm: drop the norm (additive) term entirely (trig term only). Not the same as the config's
            ``disable_mlr``, which keeps the norm term but uses ``E|q|`` instead of ``E|q| - |E q|``.
        offsets: ``geometric`` (1, 2, 4, ..., paper) or ``linear`` (every distance 1..``offset_max_length``,
            uniform weight over the future window; needs ``aggregation='mean'``).
    """

    name = "triattention-ablation"

    def __init__(self, disable_norm: bool = False, offsets: str = "geometric"):
        if offsets not in ("geometric", "linear"):
            raise ValueError(f"offsets must be 'geometric' or 'linear', got {offsets!r}")
        self.disable_norm, self.offsets = disable_norm, offsets

    def future_offsets(self, cache, device):
        if self.offsets == "geometric":
            return super().future_offsets(cache, device)
        if cache.config.aggregation != "mean":
            raise ValueError("linear offsets need aggregation='mean'")
        return torch.arange(1, cache.config.offset_max_length + 1, device=device, dtype=torch.float32)

    def adjust_weights(self, trig_weights, norm_weights):
        return trig_weights, (torch.zeros_like(norm_weights) if self.disable_norm else norm_weights)


# name -> (policy class, policy keyword arguments, config overrides the method implies)
METHODS = {
    "full": (FullCachePolicy, {}, {}),
    "triattention": (TriAttentionPolicy, {}, {}),
    # The sampler's recommended setting (config preset "recommended"); callers use online statistics for it.
    "triattention-recommended": (TriAttentionPolicy, {}, dict(PRESETS["recommended"])),
    # Best measured quality at 4x the scoring reads (config preset "quality"); online statistics as well.
    "triattention-quality": (TriAttentionPolicy, {}, dict(PRESETS["quality"])),
    "streamingllm": (StreamingLLMPolicy, {}, {"sink_tokens": 4}),
    "random": (RandomPolicy, {}, {}),
    "knorm": (KeyNormPolicy, {}, {}),
    "snapkv": (SnapKVPolicy, {}, {}),
    "tri-no-trig": (TriAttentionPolicy, {}, {"disable_trig": True}),
    "tri-no-mlr": (TriAttentionPolicy, {}, {"disable_mlr": True}),
    "tri-no-norm": (TriAttentionAblationPolicy, {"disable_norm": True}, {}),
    "tri-linear": (TriAttentionAblationPolicy, {"offsets": "linear"}, {}),
}
# TriAttention without the offline file (callers that own the calibration drop it for this name).
ALIASES = {"triattention-online": "triattention"}


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def split_methods(text: str) -> list:
    """Split a comma-separated method list, keeping commas inside ``[...]`` (``a,b[x=1,y=2],c``)."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    out.append(current.strip())
    return [m for m in out if m]


def parse_method(spec: str):
    """``name`` or ``name[key=value,...]`` -> (name, {setting: value}).

    Settings are :class:`~.config.TriAttentionConfig` fields (``recent_window=32``) or keyword arguments of
    the method's policy (``snapkv[kernel_size=1]``); :func:`make_policy` sorts them out."""
    spec = spec.strip()
    if "[" not in spec:
        return spec, {}
    if not spec.endswith("]") or spec.count("[") != 1:
        raise ValueError(f"method {spec!r}: write settings as name[key=value,...]")
    name, body = spec[:-1].split("[", 1)
    settings = {}
    for item in filter(None, (x.strip() for x in body.split(","))):
        if "=" not in item:
            raise ValueError(f"method {spec!r}: setting {item!r} is not key=value")
        key, value = item.split("=", 1)
        settings[key.strip()] = _parse_value(value)
    return name.strip(), settings


def make_policy(method: str, seed: int = 0):
    """(policy, config overrides) for a method spec: a name in :data:`METHODS` optionally followed by
    ``[key=value,...]`` settings (config fields or the policy's keyword arguments)."""
    name, settings = parse_method(method)
    name = ALIASES.get(name, name)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join([*METHODS, *ALIASES])}")
    cls, policy_kwargs, overrides = METHODS[name]
    config_fields = set(TriAttentionConfig.__dataclass_fields__)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"} if cls.__init__ is not object.__init__ \
        else set()
    policy_kwargs, overrides = dict(policy_kwargs), dict(overrides)
    for key, value in settings.items():
        if key in config_fields:
            overrides[key] = value
        elif key in accepted:
            policy_kwargs[key] = value
        else:
            raise ValueError(f"method {method!r}: unknown setting {key!r} (config fields: "
                             f"{', '.join(sorted(config_fields))}; {cls.__name__} takes: "
                             f"{', '.join(sorted(accepted)) or 'nothing'})")
    if cls is RandomPolicy:
        policy_kwargs.setdefault("seed", seed)
    return cls(**policy_kwargs), overrides
