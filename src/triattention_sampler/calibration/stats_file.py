"""Calibration statistics files: safetensors with the RoPE facts they were measured under, validated against
the model on load; plus a reader for the authors' ``.pt`` format. Every unusable file is refused at load time
with one error that names the file and what is wrong with it.
"""
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import CalibrationMismatchError
from ..model_info import ModelInfo

logger = logging.getLogger(__name__)

FORMAT = "triattention-calibration/1"
STAT_NAMES = ("q_mean_real", "q_mean_imag", "q_abs_mean", "q_pass_mean")
MAKE_ONE = "make one with `triattention calibrate` or ts.calibrate(model, tokenizer, text).save(path)"
AUTHORS_FIX = "re-run the authors' calibrate.py, or " + MAKE_ONE


@dataclass
class CalibrationStats:
    """Per layer ``l``, query head ``h`` and frequency ``f``: ``q_mean_real/imag``, ``q_abs_mean``
    ``[L, Hq, F]`` float32 and ``q_pass_mean [L, Hq, D - rotary_dim]`` (width 0 when unknown), plus ``metadata``.

    Construction checks shapes and values (finite, ``q_abs_mean >= |q_mean| >= 0``): impossible statistics are
    refused here, not at the first round."""

    q_mean_real: torch.Tensor
    q_mean_imag: torch.Tensor
    q_abs_mean: torch.Tensor
    q_pass_mean: torch.Tensor
    metadata: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        where = self.metadata.get("path") or "calibration statistics"
        for name in STAT_NAMES:
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 3:
                got = f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}"
                raise CalibrationMismatchError(f"{where}: {name} must be a float tensor [layers, heads, n], got {got}")
        shape = tuple(self.q_mean_real.shape)
        for name in STAT_NAMES[1:3]:
            if tuple(getattr(self, name).shape) != shape:
                raise CalibrationMismatchError(f"{where}: {name} has shape {tuple(getattr(self, name).shape)}, "
                                               f"q_mean_real has {shape}")
        if tuple(self.q_pass_mean.shape[:2]) != shape[:2]:
            raise CalibrationMismatchError(f"{where}: q_pass_mean has shape {tuple(self.q_pass_mean.shape)}, "
                                           f"expected [{shape[0]}, {shape[1]}, D - rotary_dim]")
        self._check_shapes_against_metadata(where)
        for name in STAT_NAMES:
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise CalibrationMismatchError(f"{where}: statistic {name} contains NaN or inf")
        centre = torch.sqrt(self.q_mean_real.double() ** 2 + self.q_mean_imag.double() ** 2)
        if bool((self.q_abs_mean < 0).any()):
            raise CalibrationMismatchError(f"{where}: q_abs_mean has negative entries (min "
                                           f"{float(self.q_abs_mean.min()):.4g}); a mean modulus cannot be negative: "
                                           f"the file is corrupt, {MAKE_ONE}")
        if bool((centre > self.q_abs_mean.double() * (1 + 1e-4) + 1e-6).any()):
            raise CalibrationMismatchError(f"{where}: |q_mean| exceeds q_abs_mean (a mean's modulus is at most the "
                                           f"mean modulus): the statistics are corrupt, {MAKE_ONE}")

    def _check_shapes_against_metadata(self, where: str) -> None:
        """The tensors must have the shape the file's own metadata describes (checked at load, before any model)."""
        meta = {k: _as_int(self.metadata.get(k)) for k in ("num_layers", "num_heads", "head_dim", "rotary_dim")}
        layers, heads, freqs = self.q_mean_real.shape
        rotary = meta["rotary_dim"] or meta["head_dim"]
        for key, have in (("num_layers", layers), ("num_heads", heads)):
            if meta[key] is not None and meta[key] != have:
                raise CalibrationMismatchError(f"{where}: statistics cover {have} {key[4:]} but the file's metadata "
                                               f"says {key}={meta[key]}: the file is corrupt, {MAKE_ONE}")
        if rotary is not None and rotary // 2 != freqs:
            raise CalibrationMismatchError(f"{where}: statistics have {freqs} frequencies but the file's metadata "
                                           f"says rotary_dim={rotary} ({rotary // 2}): the file is corrupt, {MAKE_ONE}")
        width = self.q_pass_mean.shape[-1]
        if meta["head_dim"] is not None and rotary is not None and width not in (0, meta["head_dim"] - rotary):
            raise CalibrationMismatchError(
                f"{where}: q_pass_mean has width {width} but the file's metadata says head_dim {meta['head_dim']} - "
                f"rotary_dim {rotary} = {meta['head_dim'] - rotary} unrotated dims: the file is corrupt, {MAKE_ONE}")

    def layer(self, idx: int) -> Dict[str, Optional[torch.Tensor]]:
        out = {name: getattr(self, name)[idx] for name in STAT_NAMES}
        if out["q_pass_mean"].shape[-1] == 0:
            out["q_pass_mean"] = None  # not recorded (authors' files): the position-free term is left out
        return out

    @property
    def token_count(self) -> int:
        return int(self.metadata.get("token_count", 0))

    # -- validation -----------------------------------------------------------------------------------------
    def validate(self, info: ModelInfo, *, allow_other_model: bool = False) -> None:
        """Raise :class:`CalibrationMismatchError` naming the first fact that differs from the model (and the fix)."""
        try:
            self._validate(info, allow_other_model)
        except CalibrationMismatchError as err:
            raise CalibrationMismatchError(f"{err}; calibrate this model instead (`triattention calibrate`, or "
                                           "ts.calibrate(model, tokenizer, text).save(path))") from None

    def _validate(self, info: ModelInfo, allow_other_model: bool) -> None:
        meta, rope = {k: _maybe_json(v) if k in ("omega", "pruned_layers", "rope_params") else v
                      for k, v in self.metadata.items()}, info.rope
        where = meta.get("path") or "calibration file"
        expected = {
            "num_layers": info.num_layers, "num_heads": info.num_heads, "num_kv_heads": info.num_kv_heads,
            "head_dim": info.head_dim, "rotary_dim": rope.rotary_dim, "rope_style": rope.style,
            "rope_type": rope.rope_type,
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
                    f"{where} was made for {key}={have!r} but the model has {key}={want!r}"
                    + (" (pass allow_other_model=True to use statistics of a related model)"
                       if key in ("model_name", "model_type") else ""))
        shape = (info.num_layers, info.num_heads, rope.freq_count)
        if tuple(self.q_mean_real.shape) != shape:
            raise CalibrationMismatchError(
                f"{where}: statistics have shape {tuple(self.q_mean_real.shape)}, the model needs {shape} "
                "(layers, query heads, frequencies)")
        width = self.q_pass_mean.shape[-1]
        if width not in (0, info.head_dim - rope.rotary_dim):
            raise CalibrationMismatchError(
                f"{where}: q_pass_mean has width {width}, the model passes {info.head_dim - rope.rotary_dim} dims "
                f"unrotated (head_dim {info.head_dim} - rotary_dim {rope.rotary_dim})")
        # RoPE facts come from the config in float64, so casting the model (bf16) is not "another model".
        theta = meta.get("rope_theta")
        if theta not in (None, "", 0, 0.0) and rope.theta and not math.isclose(float(theta), float(rope.theta),
                                                                              rel_tol=1e-9):
            raise CalibrationMismatchError(
                f"{where} was made with rope_theta={theta} but the model uses rope_theta={rope.theta}")
        params = meta.get("rope_params")
        if isinstance(params, dict) and rope.params:
            for key in sorted(set(params) & set(rope.params)):
                a, b = params[key], rope.params[key]
                same = math.isclose(float(a), float(b), rel_tol=1e-9) if _is_number(a) and _is_number(b) else a == b
                if not same:
                    raise CalibrationMismatchError(f"{where} was made with RoPE setting {key}={a!r}, the model uses "
                                                   f"{key}={b!r}")
        omega = meta.get("omega")
        config_facts = theta not in (None, "", 0, 0.0) and bool(rope.theta)
        if omega and not config_facts:  # a coarse guard for files without config facts: a half-precision model
            # probes frequencies rounded to its dtype (bf16 ~4e-3 relative, fp16 subnormals more)
            have = torch.tensor(omega, dtype=torch.float64)
            want = rope.omega.double()
            if have.shape != want.shape or not torch.allclose(have, want, rtol=1e-2, atol=1e-7):
                raise CalibrationMismatchError(
                    f"{where} was made with other RoPE frequencies (rope_theta or rope scaling differ)")
        scale = meta.get("rope_scale")
        if scale not in (None, "") and not math.isclose(float(scale), rope.scale, rel_tol=1e-2):
            raise CalibrationMismatchError(
                f"{where} was made with RoPE attention scaling {scale}, the model uses {rope.scale}")
        pruned = meta.get("pruned_layers")
        if isinstance(pruned, list) and [int(i) for i in pruned] != info.pruned_layers:
            raise CalibrationMismatchError(
                f"{where} was made with pruned layers {pruned}, the model prunes {info.pruned_layers} "
                "(sliding-window / NoPE layers differ)")

    # -- files ----------------------------------------------------------------------------------------------
    def save(self, path: Union[str, "os.PathLike"]) -> None:
        path = os.fspath(path)
        tensors = {f"triattention.{name}": getattr(self, name).float().contiguous().cpu() for name in STAT_NAMES}
        meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in self.metadata.items() if k != "path"}
        meta["format"] = FORMAT
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_file(tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike"]) -> "CalibrationStats":
        """Read a ``.safetensors`` written by :meth:`save` or the authors' ``.pt`` stats."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"calibration must be a file path, CalibrationStats or None, got {type(path).__name__}")
        path = os.fspath(path)
        if os.path.isdir(path):
            raise CalibrationMismatchError(f"{path} is a directory, not a calibration file; {MAKE_ONE}")
        if not os.path.exists(path):
            raise FileNotFoundError(f"calibration file not found: {path}; {MAKE_ONE}")
        if os.path.getsize(path) == 0:
            raise CalibrationMismatchError(f"{path} is empty (0 bytes), not a calibration file; {MAKE_ONE}")
        if path.endswith(".pt"):
            return cls.from_authors_pt(path)
        try:
            with safe_open(path, framework="pt") as handle:
                meta = dict(handle.metadata() or {})
                if meta.get("format") != FORMAT:
                    raise CalibrationMismatchError(f"{path} is not a triattention calibration file (format "
                                                   f"{meta.get('format')!r}, expected {FORMAT!r}); {MAKE_ONE}")
                names = set(handle.keys())
                missing = [n for n in STAT_NAMES if f"triattention.{n}" not in names]
                if missing:
                    raise CalibrationMismatchError(f"{path} lacks the statistics {missing}; {MAKE_ONE}")
                tensors = {name: handle.get_tensor(f"triattention.{name}") for name in STAT_NAMES}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            if isinstance(err, CalibrationMismatchError):
                raise
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CalibrationMismatchError(f"{path} is not a readable safetensors file ({reason}): truncated or "
                                           f"not a calibration file; {MAKE_ONE}") from None
        meta = {k: _maybe_json(v) for k, v in meta.items()}
        meta["path"] = path
        return cls(**tensors, metadata=meta)

    @classmethod
    def from_authors_pt(cls, path: str) -> "CalibrationStats":
        """Read the original authors' ``torch.save`` stats (``stats['layerLL_headHH']``).

        Their ``calibrate.py`` stores ``attention_scaling * q`` and captures before any q_norm; the
        metadata keeps what the file says (rope_style, head_dim) so validation checks what it can.
        """
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickle/zip errors of every kind: the file is unreadable
            # torch's own text (e.g. "re-run with weights_only=False") would be the wrong advice for a stats file
            raise CalibrationMismatchError(f"{path} is not a readable torch file ({type(err).__name__}): truncated "
                                           f"or not an authors' stats file; {AUTHORS_FIX}") from None
        if not isinstance(payload, dict) or "stats" not in payload or "metadata" not in payload:
            raise CalibrationMismatchError(f"{path} is not an authors' TriAttention stats file (no metadata/stats); "
                                           f"{AUTHORS_FIX}")
        meta, stats = payload["metadata"], payload["stats"]
        if not isinstance(stats, dict) or not stats:
            raise CalibrationMismatchError(f"{path} holds no statistics (empty 'stats'); {AUTHORS_FIX}")
        if not isinstance(meta, dict) or "head_dim" not in meta:
            raise CalibrationMismatchError(f"{path}: metadata has no head_dim; {AUTHORS_FIX}")
        try:
            heads = [tuple(map(int, pair)) for pair in meta.get("sampled_heads", [])] or [
                tuple(int(part[5:]) if part.startswith("layer") else int(part[4:]) for part in key.split("_"))
                for key in stats]
        except (ValueError, TypeError):
            raise CalibrationMismatchError(f"{path}: statistics keys must look like 'layer00_head00'; "
                                           f"{AUTHORS_FIX}") from None
        num_layers = int(meta.get("num_layers", max(l for l, _ in heads) + 1))
        num_heads = int(meta.get("num_attention_heads", max(h for _, h in heads) + 1))
        head_dim = int(meta["head_dim"])
        freq = head_dim // 2
        out = {name: torch.zeros(num_layers, num_heads, freq) for name in STAT_NAMES[:3]}
        for layer, head in heads:
            entry = stats.get(f"layer{layer:02d}_head{head:02d}")
            if not isinstance(entry, dict) or any(name not in entry for name in STAT_NAMES[:3]):
                raise CalibrationMismatchError(f"{path}: sampled head ({layer}, {head}) has no statistics "
                                               f"({', '.join(STAT_NAMES[:3])}); {AUTHORS_FIX}")
            for name in STAT_NAMES[:3]:
                value = torch.as_tensor(entry[name]).float().reshape(-1)
                if value.numel() != freq:
                    raise CalibrationMismatchError(f"{path}: {name} of head ({layer}, {head}) has {value.numel()} "
                                                   f"entries, head_dim {head_dim} needs {freq}")
                out[name][layer, head] = value
        if len(heads) != num_layers * num_heads:
            logger.warning("%s covers %d of %d heads; missing heads score by key norm only", path, len(heads),
                           num_layers * num_heads)
        metadata = {
            "path": path, "source": f"authors-pt:{os.path.basename(path)}", "model_name": "", "model_type": "",
            "head_dim": head_dim, "rotary_dim": head_dim, "num_layers": num_layers, "num_heads": num_heads,
            "rope_style": meta.get("rope_style", "half"), "rope_type": meta.get("rope_type", ""),
            "rope_theta": meta.get("rope_theta", ""), "num_kv_heads": meta.get("num_kv_heads", ""),
        }
        return cls(**out, q_pass_mean=torch.zeros(num_layers, num_heads, 0), metadata=metadata)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_int(value) -> Optional[int]:
    """An integer metadata fact, or None where the file leaves it out ("" in the authors' files)."""
    try:
        return int(value) if value not in (None, "") and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


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
        "rope_theta": rope.theta, "rope_params": rope.params, "rope_scale": rope.scale,
        "omega": rope.omega.double().tolist(), "pruned_layers": info.pruned_layers, **extra,
    }


def as_calibration(calibration) -> Optional[CalibrationStats]:
    """``None``, a :class:`CalibrationStats`, or a path (``str`` / ``os.PathLike``) to load."""
    if calibration is None or isinstance(calibration, CalibrationStats):
        return calibration
    return CalibrationStats.load(calibration)
