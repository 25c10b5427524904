"""The one place that knows method names: which scorer each builds, what it needs, what it implies.

A method spec is ``name`` or ``name[key=value,...]``; keys are :class:`~..config.TriAttentionConfig` fields or
keyword arguments of the method's scorer (``snapkv[kernel_size=1,recent_window=32]``). The API
(:func:`~..generate.generate`, :func:`build_cache`), the CLI and the evaluation all resolve names here.
"""
import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from ..config import PRESETS, TriAttentionConfig
from .base import Scorer
from .knorm import KeyNormScorer
from .random_scorer import RandomScorer
from .snapkv import SnapKVScorer
from .streamingllm import StreamingLLMScorer
from .triattention import TriAttentionScorer

UNBOUNDED = 1 << 30  # the "full" method's budget: no round ever fires


@dataclass(frozen=True)
class Method:
    """How a method name becomes a cache.

    Attributes:
        scorer: class of the scorer.
        scorer_kwargs: its keyword arguments.
        settings: cache settings the method implies (StreamingLLM's sinks, the presets).
        calibration: ``"optional"`` (an offline file when given, else online statistics), ``"online"`` (never a
            file) or ``None`` (no statistics).
        offline_by_default: the evaluation gives it its default offline file (the paper's setting) — methods
            measured with online statistics do not get one.
        unbounded: keep every token (the full-cache reference).
        summary: one line for ``--help``.
    """

    scorer: Callable[..., Scorer]
    scorer_kwargs: Dict[str, object] = field(default_factory=dict)
    settings: Dict[str, object] = field(default_factory=dict)
    calibration: Optional[str] = None
    offline_by_default: bool = False
    unbounded: bool = False
    summary: str = ""


METHODS: Dict[str, Method] = {
    "full": Method(StreamingLLMScorer, unbounded=True, summary="no compression (the reference)"),
    "triattention": Method(TriAttentionScorer, calibration="optional", offline_by_default=True,
                           summary="the paper's settings (offline file when given, else online statistics)"),
    "triattention-online": Method(TriAttentionScorer, calibration="online",
                                  summary="the paper's scoring, statistics always from the prompt"),
    "triattention-recommended": Method(TriAttentionScorer, settings=dict(PRESETS["recommended"]),
                                       calibration="optional",
                                       summary="recommended: paper scoring, every 4th layer scored, online statistics"),
    "triattention-quality": Method(TriAttentionScorer, settings=dict(PRESETS["quality"]), calibration="optional",
                                   summary="best measured quality: per-layer budgets, every layer scored"),
    "streamingllm": Method(StreamingLLMScorer, settings={"sink_tokens": 4}, summary="4 sinks + most recent"),
    "random": Method(RandomScorer, summary="uniformly random keep set (seeded)"),
    "knorm": Method(KeyNormScorer, summary="lowest key norm (kvpress KnormPress)"),
    "snapkv": Method(SnapKVScorer, summary="attention of the last 32 queries, max-pooled (SnapKV)"),
    "tri-no-trig": Method(TriAttentionScorer, {"disable_trig": True}, calibration="optional",
                          offline_by_default=True, summary="ablation: norm term only"),
    "tri-no-mlr": Method(TriAttentionScorer, {"disable_mlr": True}, calibration="optional",
                         offline_by_default=True, summary="ablation: E|q| instead of E|q| - |E q|"),
    "tri-no-norm": Method(TriAttentionScorer, {"disable_norm": True}, calibration="optional",
                          offline_by_default=True, summary="ablation: trig term only"),
    "tri-linear": Method(TriAttentionScorer, {"offsets": "linear"}, calibration="optional", offline_by_default=True,
                         summary="ablation: linear instead of geometric offsets"),
}


DEFAULT_METHOD = "triattention-recommended"  # what generate, bench and the flag use unless told
PRESET_METHODS = {"paper": "triattention", "recommended": "triattention-recommended", "quality": "triattention-quality"}
BASELINE = "streamingllm"  # what the evaluation pairs every method against
REFERENCE = "full"  # no compression: what every compressed run is compared with
EVAL_METHODS = ["triattention-recommended", "triattention", "triattention-online", "streamingllm", "snapkv",
                "snapkv[kernel_size=1,recent_window=32]", "random", "knorm",
                "tri-no-trig", "tri-no-norm", "tri-no-mlr", "tri-linear"]


def method_names() -> List[str]:
    return list(METHODS)


def describe_methods() -> str:
    """``name: summary`` lines for ``--help``."""
    return "; ".join(f"{name} ({m.summary})" for name, m in METHODS.items())


def parse_value(text: str):
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


def parse_method(spec: str) -> Tuple[str, Dict[str, object]]:
    """``name`` or ``name[key=value,...]`` -> (name, {setting: value})."""
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
        settings[key.strip()] = parse_value(value)
    return name.strip(), settings


def lookup(spec: str) -> Tuple[str, Method, Dict[str, object]]:
    """(name, method, settings written in the spec)."""
    name, settings = parse_method(spec)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return name, METHODS[name], settings


def make_scorer(spec: str, seed: int = 0) -> Tuple[Scorer, Dict[str, object], Dict[str, object]]:
    """(scorer, settings the method implies, settings written in the spec) for a method spec."""
    name, method, settings = lookup(spec)
    config_fields = set(TriAttentionConfig.field_names())
    accepted = set(inspect.signature(method.scorer.__init__).parameters) - {"self", "args", "kwargs"} \
        if method.scorer.__init__ is not object.__init__ else set()
    scorer_kwargs, from_spec = dict(method.scorer_kwargs), {}
    for key, value in settings.items():
        if key in config_fields:
            from_spec[key] = value
        elif key in accepted:
            scorer_kwargs[key] = value
        else:
            raise ValueError(f"method {spec!r}: unknown setting {key!r} (cache settings: "
                             f"{', '.join(sorted(config_fields))}; {method.scorer.__name__} takes: "
                             f"{', '.join(sorted(accepted)) or 'nothing'})")
    if method.scorer is RandomScorer:
        scorer_kwargs.setdefault("seed", seed)
    return method.scorer(**scorer_kwargs), dict(method.settings), from_spec


def resolve(spec: str, budget: Optional[int] = None, *, seed: int = 0, **overrides):
    """(scorer, config) for a method spec. Precedence: what the method implies < ``overrides`` (the caller's,
    e.g. CLI flags) < settings written in the spec; ``budget`` counts as an override."""
    scorer, implied, from_spec = make_scorer(spec, seed=seed)
    if budget is not None:
        overrides["budget"] = budget
    settings = {**implied, **overrides, **from_spec}
    if METHODS[parse_method(spec)[0]].unbounded:
        settings["budget"] = max(int(settings.get("budget", 1)), UNBOUNDED)
    return scorer, TriAttentionConfig(**settings)


def uses_statistics(spec: str) -> bool:
    """Whether a method spec scores with query statistics (and so can take an offline file)."""
    return lookup(spec)[1].calibration is not None


def takes_file(spec: str, *, evaluation: bool = False) -> bool:
    """Whether the method gets a calibration file the caller has (``evaluation``: the harness's default file)."""
    method = lookup(spec)[1]
    if evaluation:
        return method.offline_by_default
    return method.calibration == "optional"
