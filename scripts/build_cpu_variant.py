#!/usr/bin/env python
"""Build the CPU variant of the triattention kernel without Nix, laid out as kernel-builder lays it out.

Output: ``build/torch<MAJ><MIN>-cxx11-cpu-<arch>-linux/`` holding ``_triattention_cpu_<id>.abi3.so``, a generated
``_ops.py``, the Python files of ``torch-ext/triattention`` and ``metadata.json`` (layout: variant_common.py).
Sources and extra flags come from build.toml's cpu kernel. Compilation uses ninja with the include and library
paths of ``torch.utils.cpp_extension``; nothing is rebuilt when the inputs hash the same.

Usage: python scripts/build_cpu_variant.py [--out build] [--unique-id ID] [--force]
"""
import argparse
import os
import platform
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import variant_common as vc  # noqa: E402
from variant_common import git_unique_id  # noqa: E402,F401  (part of this script's API)

ROOT = vc.ROOT
SOURCES, HEADERS, KERNEL = vc.kernel_files("cpu")
# What kernel-builder's CMake passes for a CPU kernel, then the kernel's cxx-flags from build.toml.
BASE_CXX_FLAGS = ["-O3", "-std=c++20", "-fPIC", "-DCPU_KERNEL", "-DPy_LIMITED_API=0x03090000", "-Wall",
                  "-Wno-unused-function", "-Wno-psabi"]
CXX_FLAGS = BASE_CXX_FLAGS + KERNEL.get("cxx-flags", [])
WORK = ROOT / "_build_cpu"


def variant_name() -> str:
    return f"{vc.torch_prefix()}-cpu-{platform.machine()}-{sys.platform}"


def ninja_lines(ops_name: str, so_path: Path) -> list:
    import torch
    from torch.utils import cpp_extension

    includes = [str(WORK / "include"), str(ROOT / "kernel_src"), str(ROOT / "torch-ext")]
    includes += cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cflags = CXX_FLAGS + [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-DTORCH_EXTENSION_NAME={ops_name}"]
    cflags += [f"-isystem {i}" if "site-packages" in i or "include/python" in i else f"-I{i}" for i in includes]
    lib_dir = cpp_extension.library_paths()[0]
    ldflags = ["-shared", "-fopenmp", f"-L{lib_dir}", "-lc10", "-ltorch_cpu", "-ltorch"]
    lines = [f"cxx = {os.environ.get('CXX', 'c++')}", f"cflags = {' '.join(cflags)}",
             f"ldflags = {' '.join(ldflags)}"] + vc.HOST_RULES
    objs = [str(WORK / (src.stem + ".o")) for src in SOURCES]
    lines += [f"build {obj}: compile {src}" for obj, src in zip(objs, SOURCES)]
    return lines + vc.link_lines(WORK, objs, so_path)


def build(out_root: Path, unique_id: str, force: bool = False, verbose: bool = True) -> Path:
    ops_name = f"_{vc.NAME}_cpu_{unique_id}"
    return vc.build_variant(__file__, WORK, out_root / variant_name(), ops_name, SOURCES + HEADERS,
                            [CXX_FLAGS, unique_id], lambda so_path: ninja_lines(ops_name, so_path),
                            {"type": "cpu"}, force, verbose)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="build root (default: build/)")
    parser.add_argument("--unique-id", default=None, help="ops-name suffix (default: git short rev [+_dirty])")
    parser.add_argument("--force", action="store_true", help="rebuild even if inputs are unchanged")
    args = parser.parse_args()
    print(build(args.out, args.unique_id or git_unique_id(), force=args.force))


if __name__ == "__main__":
    main()
