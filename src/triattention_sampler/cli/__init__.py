"""``triattention``: calibrate, generate, eval (quality), bench (speed/memory) and plot.

Bad input (missing files, a budget that does not exceed the protected tokens, an unknown method, an unwritable
output) ends with exit code 2 and a one-line message before any work starts. Results are JSON (+ CSV) under
``results/`` so later runs can compare.
"""
import argparse
import sys

from . import bench, calibrate, eval, generate, plot
from .common import CLIError

POSITIVE = ("budget", "interval", "max_new_tokens", "tokens", "chunk", "max_tokens", "every", "window",
            "chunk_tokens", "calibration_tokens")
NON_NEGATIVE = ("threads", "offset", "prefill_chunk", "sink_tokens", "recent_window", "seed")


def build_parser():
    from ..scorers.registry import describe_methods

    parser = argparse.ArgumentParser(prog="triattention", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    calibrate.add_parser(sub)
    generate.add_parser(sub, describe_methods())
    eval.add_parser(sub)
    bench.add_parser(sub)
    plot.add_parser(sub)
    return parser


def _check_numbers(args):
    for names, low in ((POSITIVE, 1), (NON_NEGATIVE, 0)):
        for name in names:
            value = getattr(args, name, None)
            if value is not None and value < low:
                raise CLIError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def _check_device(args):
    """A device this machine lacks is refused before any file is read or model loaded."""
    if getattr(args, "device", None):
        from ..models import check_device

        try:
            check_device(args.device)
        except ValueError as err:
            raise CLIError(str(err)) from None


def main(argv=None):
    from ..errors import CalibrationMismatchError, UnsupportedModelError

    args = build_parser().parse_args(argv)
    try:
        _check_numbers(args)
        _check_device(args)
        args.func(args)
    except (CLIError, CalibrationMismatchError, UnsupportedModelError) as err:
        # the sampler's own refusals (a file made for another model, a model it cannot compress) are usage errors
        # found once the model is loaded: one line too
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"triattention {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
