#!/usr/bin/env python
"""Build the CPU variant of the triattention kernel without Nix, laid out as kernel-builder lays it out.

Output: ``build/torch<MAJ><MIN>-cxx11-cpu-<arch>-linux/`` holding ``_triattention_cpu_<id>.abi3.so``, a generated
``_ops.py``, the Python files of ``torch-ext/triattention`` and ``metadata.json``. The unique id is the git short
rev of HEAD (``_dirty`` when tracked files differ), as kernel-builder derives it. Compilation uses ninja with the
include and library paths of ``torch.utils.cpp_extension``; nothing is rebuilt when the inputs hash the same.

Usage: python scripts/build_cpu_variant.py [--out build] [--unique-id ID] [--force]
"""
import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent
NAME = "triattention"
PY_DIR = ROOT / "torch-ext" / NAME
CPP_SOURCES = [
    ROOT / "torch-ext" / "torch_binding.cpp",
    ROOT / "kernel_src" / "triattention_cpu" / "triattention_cpu.cpp",
]
HEADERS = [ROOT / "torch-ext" / "torch_binding.h", ROOT / "kernel_src" / "triattention_math.h", ROOT / "build.toml"]
# What kernel-builder's CMake passes for a CPU kernel; [kernel.triattention_cpu] cxx-flags from build.toml
# are appended in build_config().
BASE_CXX_FLAGS = ["-O3", "-std=c++20", "-fPIC", "-DCPU_KERNEL", "-DPy_LIMITED_API=0x03090000", "-Wall",
                  "-Wno-unused-function", "-Wno-psabi"]
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


def variant_name() -> str:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    abi = "cxx11" if torch._C._GLIBCXX_USE_CXX11_ABI else "cxx98"
    return f"torch{major}{minor}-{abi}-cpu-{platform.machine()}-{sys.platform}"


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


def build_config() -> tuple:
    """(license, cxx flags) from build.toml: the CPU kernel is compiled with the flags Nix would use."""
    import tomllib

    config = tomllib.loads((ROOT / "build.toml").read_text())
    cpu = [k for k in config["kernel"].values() if k["backend"] == "cpu"]
    return config["general"]["license"], BASE_CXX_FLAGS + (cpu[0].get("cxx-flags", []) if cpu else [])


LICENSE, CXX_FLAGS = build_config()


def inputs_hash(unique_id: str) -> str:
    h = hashlib.sha256()
    for p in sorted(CPP_SOURCES + HEADERS + [p for p in PY_DIR.rglob("*") if p.suffix in PYEXT]):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    h.update(json.dumps([CXX_FLAGS, unique_id, torch.__version__, Path(__file__).read_bytes().hex()]).encode())
    return h.hexdigest()


def write_ninja(build_dir: Path, ops_name: str, so_path: Path) -> Path:
    includes = [str(build_dir / "include"), str(ROOT / "kernel_src"), str(ROOT / "torch-ext")]
    includes += cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cflags = CXX_FLAGS + [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-DTORCH_EXTENSION_NAME={ops_name}"]
    cflags += [f"-isystem {i}" if "site-packages" in i or "include/python" in i else f"-I{i}" for i in includes]
    lib_dir = cpp_extension.library_paths()[0]
    ldflags = ["-shared", "-fopenmp", f"-L{lib_dir}", "-lc10", "-ltorch_cpu", "-ltorch"]
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {os.environ.get('CXX', 'c++')}",
        f"cflags = {' '.join(cflags)}",
        f"ldflags = {' '.join(ldflags)}",
        "rule compile",
        "  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "rule link",
        "  command = $cxx $in $ldflags -o $out",
    ]
    objs = []
    for src in CPP_SOURCES:
        obj = build_dir / (src.stem + ".o")
        objs.append(str(obj))
        lines.append(f"build {obj}: compile {src}")
    shim = build_dir / "manylinux_shim.c"
    shim.write_text(MANYLINUX_SHIM_C)
    lines += ["rule compile_c", "  command = cc -O2 -fPIC -c $in -o $out", f"build {shim}.o: compile_c {shim}"]
    objs.append(f"{shim}.o")
    lines.append(f"build {so_path}: link {' '.join(objs)}")
    lines.append(f"default {so_path}")
    path = build_dir / "build.ninja"
    path.write_text("\n".join(lines) + "\n")
    return path


def build(out_root: Path, unique_id: str, force: bool = False, verbose: bool = True) -> Path:
    ops_name = f"_{NAME}_cpu_{unique_id}"
    variant_dir = out_root / variant_name()
    work = ROOT / "_build_cpu"
    stamp = work / f"{variant_dir.name}.build-hash"
    digest = inputs_hash(unique_id)
    if not force and stamp.exists() and stamp.read_text() == digest and (variant_dir / f"{ops_name}.abi3.so").exists():
        if verbose:
            print(f"{variant_dir}: up to date")
        return variant_dir

    (work / "include").mkdir(parents=True, exist_ok=True)
    (work / "include" / "registration.h").write_text(REGISTRATION_H)
    so_path = work / f"{ops_name}.abi3.so"
    write_ninja(work, ops_name, so_path)
    cpp_extension.verify_ninja_availability()
    subprocess.run(["ninja", "-C", str(work)] + ([] if verbose else ["--quiet"]), check=True)

    if variant_dir.exists():
        shutil.rmtree(variant_dir)
    variant_dir.mkdir(parents=True)
    for p in PY_DIR.rglob("*"):
        if p.suffix in PYEXT and "__pycache__" not in p.parts and p.name != "_ops.py":
            dest = variant_dir / p.relative_to(PY_DIR)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
    shutil.copy2(so_path, variant_dir / so_path.name)
    (variant_dir / "_ops.py").write_text(OPS_PY.format(ops_name=ops_name))
    metadata = {
        "name": NAME,
        "id": ops_name,
        "version": 1,
        "license": LICENSE,
        "python-depends": [],
        "backend": {"type": "cpu"},
    }
    (variant_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    stamp.write_text(digest)
    if verbose:
        print(f"built {variant_dir}")
    return variant_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="build root (default: build/)")
    parser.add_argument("--unique-id", default=None, help="ops-name suffix (default: git short rev [+_dirty])")
    parser.add_argument("--force", action="store_true", help="rebuild even if inputs are unchanged")
    args = parser.parse_args()
    print(build(args.out, args.unique_id or git_unique_id(), force=args.force))


if __name__ == "__main__":
    main()
