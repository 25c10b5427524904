"""What the CPU and CUDA variant builds share: kernel-builder's layout of a build variant, read from build.toml.

A variant dir ``build/torch<MAJ><MIN>-cxx11-<backend>-<arch>-linux/`` holds ``<ops_name>.abi3.so``, a generated
``_ops.py``, the Python files of ``torch-ext/triattention`` and ``metadata.json``; ``ops_name`` is
``_triattention_<backend>_<unique id>``, the unique id the git short rev of HEAD (``_dirty`` when tracked files
differ), as kernel-builder derives it, or a hash of the build's inputs (:func:`content_unique_id`). Used by
``build_cpu_variant.py``, ``build_cuda_variant.py`` and ``check_nvcc.py``.
"""
import hashlib
import json
import shutil
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
NAME = "triattention"
PY_DIR = ROOT / "torch-ext" / NAME
BINDING_SOURCES = [ROOT / "torch-ext" / "torch_binding.cpp"]
BINDING_HEADERS = [ROOT / "torch-ext" / "torch_binding.h"]
PYEXT = (".py", ".pyi")

# kernel-builder's templates/torch/registration.h (vLLM macros), needed by torch_binding.cpp.
REGISTRATION_H = """\
#pragma once

#include <Python.h>

#define _CONCAT(A, B) A##B
#define CONCAT(A, B) _CONCAT(A, B)

#define _STRINGIFY(A) #A
#define STRINGIFY(A) _STRINGIFY(A)

#define TORCH_LIBRARY_EXPAND(NAME, MODULE) TORCH_LIBRARY(NAME, MODULE)

#define TORCH_LIBRARY_IMPL_EXPAND(NAME, DEVICE, MODULE) \\
  TORCH_LIBRARY_IMPL(NAME, DEVICE, MODULE)

#define REGISTER_EXTENSION(NAME)                                               \\
  PyMODINIT_FUNC CONCAT(PyInit_, NAME)() {                                     \\
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT,                 \\
                                        STRINGIFY(NAME), nullptr, 0, nullptr}; \\
    return PyModule_Create(&module);                                           \\
  }
"""

# libstdc++ headers of GCC >= 11 read glibc's `__libc_single_threaded` (GLIBC_2.32), above manylinux_2_28, which
# kernel-builder's toolchain targets. A local definition that always says "multi-threaded" keeps the symbol out of
# the .so; it only makes libstdc++ always take its atomic path, which is what it does in a threaded process anyway.
MANYLINUX_SHIM_C = """\
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
"""

OPS_PY = '''import torch
from . import {ops_name}
ops = torch.ops.{ops_name}

def add_op_namespace_prefix(op_name: str):
    """
    Prefix op by namespace.
    """
    return f"{ops_name}::{{op_name}}"
'''


def build_config() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "build.toml").read_text())


def kernel_files(backend: str) -> tuple:
    """(compiled sources, headers) of the ``[kernel.*]`` table of ``backend`` in build.toml, binding included."""
    config = build_config()
    tables = [k for k in config["kernel"].values() if k["backend"] == backend]
    if len(tables) != 1:
        raise SystemExit(f"build.toml has {len(tables)} [kernel.*] tables for backend {backend!r}, expected 1")
    files = [ROOT / s for s in tables[0]["src"]]
    sources = BINDING_SOURCES + [p for p in files if p.suffix in (".cpp", ".cu")]
    headers = BINDING_HEADERS + [p for p in files if p.suffix not in (".cpp", ".cu")] + [ROOT / "build.toml"]
    return sources, headers, tables[0]


def torch_prefix() -> str:
    """``torch<MAJ><MIN>-cxx11`` (or ``-cxx98``) for the installed torch."""
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    abi = "cxx11" if torch._C._GLIBCXX_USE_CXX11_ABI else "cxx98"
    return f"torch{major}{minor}-{abi}"


def git_unique_id() -> str:
    """Short rev of HEAD plus ``_dirty`` when tracked files changed (kernel-builder's ``git_identifier``)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "local"
    return f"{rev}_dirty" if dirty else rev


def inputs_hash(files, extra) -> str:
    """Hash of the build inputs: compiled files, headers, the package's Python files and ``extra`` (flags, ids)."""
    h = hashlib.sha256()
    py = [p for p in PY_DIR.rglob("*") if p.suffix in PYEXT and "__pycache__" not in p.parts]
    for p in sorted(set(files) | set(py)):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def digest(parts) -> str:
    """sha256 of files (their bytes) and strings, in order: the cache key of a compile check."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.read_bytes() if isinstance(p, Path) else str(p).encode())
    return h.hexdigest()


def run_compile_checks(jobs: list) -> int:
    """Runs compile-only checks, one per core (compilers are separate processes). ``jobs``: (label, tool, cmd, env or
    None, stamp, key); a job that succeeds writes ``key`` to ``stamp`` (callers skip jobs whose stamp holds it).
    Prints one line per job, in order; returns how many failed."""
    def one(job):
        label, tool, cmd, env, stamp, key = job
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        dt = time.perf_counter() - t0
        if proc.returncode == 0:
            stamp.write_text(key)
            return f"ok: {label} ({tool}, {dt:.0f} s)", True
        return f"FAILED: {label} ({tool}, {dt:.0f} s)\n{(proc.stdout + proc.stderr)[-6000:]}", False

    if not jobs:
        return 0
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        results = list(pool.map(one, jobs))
    for line, _ in results:
        print(line)
    return sum(1 for _, ok in results if not ok)


def write_registration_h(include_dir: Path) -> None:
    include_dir.mkdir(parents=True, exist_ok=True)
    (include_dir / "registration.h").write_text(REGISTRATION_H)


def install_variant(variant_dir: Path, so_path: Path, ops_name: str, backend: dict) -> None:
    """Lay out ``variant_dir`` as kernel-builder does: Python package files, the .so, ``_ops.py``, metadata."""
    if variant_dir.exists():
        shutil.rmtree(variant_dir)
    variant_dir.mkdir(parents=True)
    for p in PY_DIR.rglob("*"):
        if p.suffix in PYEXT and "__pycache__" not in p.parts and p.name != "_ops.py":
            dest = variant_dir / p.relative_to(PY_DIR)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
    shutil.copy2(so_path, variant_dir / f"{ops_name}.abi3.so")
    (variant_dir / "_ops.py").write_text(OPS_PY.format(ops_name=ops_name))
    metadata = {
        "name": NAME,
        "id": ops_name,
        "version": build_config()["general"]["version"],
        "license": build_config()["general"]["license"],
        "python-depends": [],
        "backend": backend,
    }
    (variant_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def run_ninja(work: Path, lines: list, verbose: bool, jobs=None) -> None:
    from torch.utils import cpp_extension

    (work / "build.ninja").write_text("\n".join(["ninja_required_version = 1.3"] + lines) + "\n")
    cpp_extension.verify_ninja_availability()
    cmd = ["ninja", "-C", str(work)] + ([f"-j{jobs}"] if jobs else [])
    if verbose:
        subprocess.run(cmd, check=True)
        return
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ninja failed in {work}:\n{(proc.stdout + proc.stderr)[-8000:]}")


# The host compiler's compile and link rules; $cxx, $cflags and $ldflags are set by each backend's ninja lines.
HOST_RULES = [
    "rule compile",
    "  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out",
    "  depfile = $out.d",
    "  deps = gcc",
    "rule link",
    "  command = $cxx $in $ldflags -o $out",
]


def link_lines(work: Path, objs: list, so_path: Path) -> list:
    """Ninja lines that compile the manylinux shim and link it with ``objs`` into ``so_path`` (the default)."""
    shim = work / "manylinux_shim.c"
    shim.write_text(MANYLINUX_SHIM_C)
    return ["rule compile_c", "  command = cc -O2 -fPIC -c $in -o $out", f"build {shim}.o: compile_c {shim}",
            f"build {so_path}: link {' '.join(objs + [f'{shim}.o'])}", f"default {so_path}"]


def prune_libraries(work: Path, keep: Path) -> list:
    """Delete the libraries of earlier builds from ``work`` (each build id links its own, ~5 MB for CUDA) and return
    their names. Why: ``work`` travels to the GPU machine (`carry`, 64 MiB with the wheels), where seven CUDA
    libraries, one per build id, had taken 35 MB."""
    stale = sorted(p for p in work.glob("*.abi3.so") if p != keep)
    for p in stale:
        p.unlink()
    return [p.name for p in stale]


def build_digest(script: str, inputs: list, settings: list) -> str:
    """What decides whether a variant is up to date: ``inputs``, ``settings``, torch's version, ``script`` (the
    backend's build script) and this file."""
    import torch

    return inputs_hash(inputs, list(settings) + [torch.__version__, Path(script).read_text(),
                                                 Path(__file__).read_text()])


def content_unique_id(script: str, inputs: list, settings: list) -> str:
    """A unique id from what is built (``h`` + 10 hex digits of :func:`build_digest`), not from git: a variant built
    on one machine is up to date on another that holds the same sources, whatever git says there (the GPU machine's
    copy of the checkout may show another revision, or tracked files as changed)."""
    return "h" + build_digest(script, inputs, settings)[:10]


def build_variant(script: str, work: Path, variant_dir: Path, ops_name: str, inputs: list, settings: list,
                  ninja_lines: Callable[[Path], list], backend: dict, force: bool, verbose: bool,
                  jobs=None) -> Path:
    """Build ``variant_dir`` unless its inputs hash as they did at the last build.

    ``inputs``: compiled files and headers; ``settings``: flags, archs and ids; the hash also covers torch's version,
    ``script`` (the backend's build script) and this file. ``ninja_lines(so_path)`` gives the backend's ninja lines.
    """
    stamp = work / f"{variant_dir.name}.build-hash"
    digest = build_digest(script, inputs, settings)
    so_name = f"{ops_name}.abi3.so"
    if not force and stamp.exists() and stamp.read_text() == digest and (variant_dir / so_name).exists():
        if verbose:
            print(f"{variant_dir}: up to date")
        return variant_dir
    write_registration_h(work / "include")
    so_path = work / so_name
    run_ninja(work, ninja_lines(so_path), verbose, jobs=jobs)
    install_variant(variant_dir, so_path, ops_name, backend)
    prune_libraries(work, so_path)
    stamp.write_text(digest)
    if verbose:
        print(f"built {variant_dir}")
    return variant_dir
