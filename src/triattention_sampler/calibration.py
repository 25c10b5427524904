"""Calibration statistics files: offline from text, saved as safetensors with the RoPE facts they were
measured under, validated against the model on load; plus a reader for the authors' ``.pt`` format.
"""
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .rope_spec import ModelInfo

logger = logging.getLogger(__name__)

FORMAT = "triattention-calibration/1"
STAT_NAMES = ("q_mean_real", "q_mean_imag", "q_abs_mean", "q_pass_mean")


class CalibrationMismatchError(ValueError):
    """A calibration file does not belong to the model it is used with."""


@dataclass
class CalibrationStats:
    """Per layer ``l``, query head ``h`` and frequency ``f``: ``q_mean_real/imag``, ``q_abs_mean``
    ``[L, Hq, F]`` float32 and ``q_pass_mean [L, Hq, D - rotary_dim]``, plus ``metadata``."""

    q_mean_real: torch.Tensor
    q_mean_imag: torch.Tensor
    q_abs_mean: torch.Tensor
    q_pass_mean: torch.Tensor
    metadata: Dict[str, object] = field(default_factory=dict)

    def layer(self, idx: int) -> Dict[str, torch.Tensor]:
        return {name: getattr(self, name)[idx] for name in STAT_NAMES}

    @property
    def token_count(self) -> int:
        return int(self.metadata.get("token_count", 0))

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_accumulator(cls, acc, info: ModelInfo, *, token_count: int, source: str = "") -> "CalibrationStats":
        means = acc.means()
        return cls(**{k: means[k][0].contiguous() for k in STAT_NAMES}, metadata=model_metadata(
            info, token_count=token_count, source=source))

    # -- validation -----------------------------------------------------------------------------------------
    def validate(self, info: ModelInfo, *, allow_other_model: bool = False) -> None:
        """Raise :class:`CalibrationMismatchError` naming the first fact that differs from the model."""
        meta = self.metadata
        rope = info.rope
        expected = {
            "num_layers": info.num_layers, "num_heads": info.num_heads, "num_kv_heads": info.num_kv_heads,
            "head_dim": info.head_dim, "rotary_dim": rope.rotary_dim, "rope_style": rope.style,
        }
        if not allow_other_model:
            expected["model_type"] = info.model_type
            expected["model_name"] = info.name
        for key, want in expected.items():
            have = meta.get(key)
            if have in (None, "") or want in (None, ""):
                continue
            if str(have) != str(want):
                raise CalibrationMismatchError(
                    f"calibration file was made for {key}={have!r} but the model has {key}={want!r}"
                    + (" (pass allow_other_model=True to use statistics of a related model)"
                       if key in ("model_name", "model_type") else ""))
        shape = (info.num_layers, info.num_heads, rope.freq_count)
        if tuple(self.q_mean_real.shape) != shape:
            raise CalibrationMismatchError(
                f"calibration statistics have shape {tuple(self.q_mean_real.shape)}, the model needs {shape} "
                "(layers, query heads, frequencies)")
        theta = meta.get("rope_theta")
        if theta not in (None, "", 0, 0.0) and rope.theta and not math.isclose(float(theta), rope.theta, rel_tol=1e-6):
            raise CalibrationMismatchError(
                f"calibration file was made with rope_theta={theta} but the model uses rope_theta={rope.theta}")
        omega = meta.get("omega")
        if omega:
            have = torch.tensor(json.loads(omega) if isinstance(omega, str) else omega, dtype=torch.float64)
            want = rope.omega.double()
            if have.shape != want.shape or not torch.allclose(have, want, rtol=1e-4, atol=1e-7):
                raise CalibrationMismatchError(
                    "calibration file was made with other RoPE frequencies (rope_theta or rope scaling differ): "
                    f"max |d omega| = {(have - want).abs().max().item() if have.shape == want.shape else 'shape'}")
        scale = meta.get("rope_scale")
        if scale not in (None, "") and not math.isclose(float(scale), rope.scale, rel_tol=1e-5):
            raise CalibrationMismatchError(
                f"calibration file was made with RoPE attention scaling {scale}, the model uses {rope.scale}")
        pruned = meta.get("pruned_layers")
        if pruned not in (None, "") and [int(i) for i in (json.loads(pruned) if isinstance(pruned, str) else pruned)] \
                != info.pruned_layers:
            raise CalibrationMismatchError(
                f"calibration file was made with pruned layers {pruned}, the model prunes {info.pruned_layers} "
                "(sliding-window / NoPE layers differ)")
        for name in STAT_NAMES[:3]:
            t = getattr(self, name)
            if not torch.isfinite(t).all():
                raise CalibrationMismatchError(f"calibration statistic {name} contains NaN or inf")

    # -- files ----------------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        tensors = {f"triattention.{name}": getattr(self, name).float().contiguous().cpu() for name in STAT_NAMES}
        meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in self.metadata.items()}
        meta["format"] = FORMAT
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_file(tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: str) -> "CalibrationStats":
        if not os.path.exists(path):
            raise FileNotFoundError(f"calibration file not found: {path}")
        if path.endswith(".pt"):
            return cls.from_authors_pt(path)
        with safe_open(path, framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            if meta.get("format") != FORMAT:
                raise CalibrationMismatchError(f"{path} is not a triattention calibration file (format {meta.get('format')!r})")
            tensors = {name: handle.get_tensor(f"triattention.{name}") for name in STAT_NAMES}
        meta = {k: _maybe_json(v) for k, v in meta.items()}
        return cls(**tensors, metadata=meta)

    @classmethod
    def from_authors_pt(cls, path: str) -> "CalibrationStats":
        """Read the original authors' ``torch.save`` stats (``stats['layerLL_headHH']``).

        Their ``calibrate.py`` stores ``attention_scaling * q`` and captures before any q_norm; the
        metadata keeps what the file says (rope_style, head_dim) so validation checks what it can.
        """
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or "stats" not in payload or "metadata" not in payload:
            raise CalibrationMismatchError(f"{path} is not an authors' TriAttention stats file (no metadata/stats)")
        meta, stats = payload["metadata"], payload["stats"]
        heads = [tuple(map(int, pair)) for pair in meta.get("sampled_heads", [])]
        if not heads:
            heads = [tuple(int(part[5:]) if part.startswith("layer") else int(part[4:]) for part in key.split("_"))
                     for key in stats]
        num_layers = int(meta.get("num_layers", max(l for l, _ in heads) + 1))
        num_heads = int(meta.get("num_attention_heads", max(h for _, h in heads) + 1))
        head_dim = int(meta["head_dim"])
        freq = head_dim // 2
        out = {name: torch.zeros(num_layers, num_heads, freq) for name in STAT_NAMES[:3]}
        for layer, head in heads:
            entry = stats.get(f"layer{layer:02d}_head{head:02d}")
            if entry is None:
                raise CalibrationMismatchError(f"{path}: sampled head ({layer}, {head}) has no statistics")
            for name in STAT_NAMES[:3]:
                out[name][layer, head] = entry[name].float()
        if len(heads) != num_layers * num_heads:
            logger.warning("%s covers %d of %d heads; missing heads score by key norm only", path, len(heads),
                           num_layers * num_heads)
        metadata = {
            "source": f"authors-pt:{os.path.basename(path)}", "model_name": "", "model_type": "",
            "head_dim": head_dim, "rotary_dim": head_dim, "num_layers": num_layers, "num_heads": num_heads,
            "rope_style": meta.get("rope_style", "half"), "rope_type": meta.get("rope_type", ""),
            "rope_theta": meta.get("rope_theta", ""), "num_kv_heads": meta.get("num_kv_heads", ""),
        }
        return cls(**out, q_pass_mean=torch.zeros(num_layers, num_heads, 0), metadata=metadata)


def _maybe_json(value: str):
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def model_metadata(info: ModelInfo, **extra) -> Dict[str, object]:
    rope = info.rope
    return {
        "model_name": info.name, "model_type": info.model_type, "num_layers": info.num_layers,
        "num_heads": info.num_heads, "num_kv_heads": info.num_kv_heads, "head_dim": info.head_dim,
        "rotary_dim": rope.rotary_dim, "rope_style": rope.style, "rope_type": rope.rope_type,
        "rope_theta": rope.theta, "rope_scale": rope.scale, "omega": json.dumps(rope.omega.double().tolist()),
        "pruned_layers": json.dumps(info.pruned_layers), **extra,
    }


def chunk_token_ids(ids: torch.Tensor, chunk_tokens: int) -> Iterable[torch.Tensor]:
    for start in range(0, ids.numel(), chunk_tokens):
        chunk = ids[start:start + chunk_tokens]
        if chunk.numel() >= 2:
            yield chunk


@torch.no_grad()
def calibrate(model, tokenizer, text: str, *, chunk_tokens: int = 1024, max_tokens: Optional[int] = None,
              progress: bool = True, source: str = "") -> CalibrationStats:
    """Offline statistics from ``text``: split into chunks of ``chunk_tokens`` (each its own sequence, so
    any length fits in memory), run through the model, and average the pre-RoPE queries of every layer.
    """
    from tqdm.auto import tqdm

    from triattention import QueryFrequencyStats

    from .attention import use_triattention_attention
    from .cache import TriAttentionCache
    from .rope_spec import describe_model

    if chunk_tokens < 2:
        raise ValueError(f"chunk_tokens must be >= 2, got {chunk_tokens}")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise ValueError("calibration text is empty (fewer than 2 tokens)")
    info = describe_model(model)
    rope = info.rope
    total = QueryFrequencyStats(1, info.num_layers, info.num_heads, info.head_dim, rope.rotary_dim, style=rope.style)
    device = next(model.parameters()).device
    base = getattr(model, "model", model)
    chunks = list(chunk_token_ids(ids, chunk_tokens))
    with use_triattention_attention(model):
        for chunk in tqdm(chunks, desc="calibrating", unit="chunk", disable=not progress):
            cache = TriAttentionCache(model_info=info, budget=chunk.numel() + 2, interval=1)
            base(input_ids=chunk[None].to(device), past_key_values=cache, use_cache=True)
            for layer_idx, stats in cache._online.items():
                total.sum_real[:, layer_idx] += stats.sum_real[:, 0].cpu()
                total.sum_imag[:, layer_idx] += stats.sum_imag[:, 0].cpu()
                total.sum_abs[:, layer_idx] += stats.sum_abs[:, 0].cpu()
                total.sum_pass[:, layer_idx] += stats.sum_pass[:, 0].cpu()
                total.count[:, layer_idx] += stats.count[:, 0].cpu()
    unseen = [i for i in info.pruned_layers if total.count[0, i] == 0]
    if unseen:
        raise RuntimeError(f"calibration captured no queries for layers {unseen}")
    for i in range(info.num_layers):
        if total.count[0, i] == 0:  # unpruned layers: placeholder statistics (never used)
            total.count[0, i] = 1
    return CalibrationStats.from_accumulator(total, info, token_count=int(ids.numel()), source=source)
