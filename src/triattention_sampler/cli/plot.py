"""``triattention plot``: PNG plots from eval/bench JSON results."""
import json
import os

from .common import CLIError, check_file


def run(args):
    from ..evaluation.plots import plot_file

    for path in args.results:
        check_file(path, "results file")
        try:
            for p in plot_file(path, args.out or os.path.dirname(path) or "."):
                print(f"wrote {p}")
        except (ValueError, KeyError, json.JSONDecodeError) as err:
            raise CLIError(f"cannot plot {path}: {err}") from None


def add_parser(sub):
    p = sub.add_parser("plot", help="PNG plots from eval/bench JSON results")
    p.add_argument("results", nargs="+", help="JSON files written by eval or bench")
    p.add_argument("--out", help="output folder (default: next to each JSON)")
    p.set_defaults(func=run)
