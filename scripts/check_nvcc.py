#!/usr/bin/env python
"""Compile-only check of the CUDA sources against this venv's torch: every .cu with nvcc, the host entries
(``kernel_src/triattention_cuda/*.cpp``) and the binding (under CUDA_KERNEL and ROCM_KERNEL) with the host compiler.
ptxas fails any kernel that spills registers to local memory.

The CPU torch wheel ships the c10/cuda headers but not the generated ``c10/cuda/impl/cuda_cmake_macros.h``; a
stand-in with ``#define C10_CUDA_BUILD_SHARED_LIBS`` is written to a private include dir. Nothing is linked
(there is no libtorch_cuda here). Results are cached by a hash of the inputs in ``_build_cpu/nvcc-check/``, so
repeated CI runs are instant. Exit status 0 = every file compiled.

Usage: python scripts/check_nvcc.py [--archs 80 90] [--force]
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from torch.utils import cpp_extension

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_cuda_variant as cuda_build  # noqa: E402
import variant_common as vc  # noqa: E402

ROOT = vc.ROOT
# Every .cu under kernel_src is compiled, listed in build.toml or not (test_build_config checks the listing).
CU_SOURCES = sorted((ROOT / "kernel_src").rglob("*.cu"))
HOST_SOURCES = sorted((ROOT / "kernel_src" / "triattention_cuda").glob("*.cpp"))
HEADERS = sorted(set(cuda_build.HEADERS) | set((ROOT / "kernel_src").rglob("*.cuh")) |
                 set((ROOT / "kernel_src").glob("*.h")))
BINDING = vc.BINDING_SOURCES[0]
WORK = ROOT / "_build_cpu" / "nvcc-check"
NVCC_FLAGS = cuda_build.NVCC_FLAGS  # the flags of the real CUDA build
# Check only: a kernel that spills registers to local memory (slow on every GPU) fails here, not on a GPU run.
# The whole build spills 0 bytes for sm_80/sm_90 (ptxas -v, 2026-12-01); on sm_90 score_keys' widest tiles use 158
# registers a thread.
PTXAS_GUARD = ["-Xptxas=--warn-on-spills,--warning-as-error"]


def cuda_include() -> str:
    """The CUDA toolkit's include dir (cuda_runtime_api.h), for the host entries compiled without nvcc."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    for home in homes:
        if home and (Path(home) / "include" / "cuda_runtime_api.h").exists():
            return str(Path(home) / "include")
    raise SystemExit("CUDA headers not found (set CUDA_HOME)")


def includes() -> list:
    macro_dir = WORK / "include"
    (macro_dir / "c10" / "cuda" / "impl").mkdir(parents=True, exist_ok=True)
    (macro_dir / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text(
        "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    vc.write_registration_h(macro_dir)
    dirs = [str(macro_dir), str(ROOT / "kernel_src"), str(ROOT / "torch-ext")]
    dirs += cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    return [f"-I{d}" for d in dirs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["80", "90"])
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    nvcc = cuda_build.nvcc_path()  # the real build's nvcc
    WORK.mkdir(parents=True, exist_ok=True)
    inc = includes()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in args.archs]
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    jobs = [(src, [nvcc, *NVCC_FLAGS, *PTXAS_GUARD, *gencode, *inc, "-c", str(src), "-o",
                   str(WORK / (src.stem + ".o"))]) for src in CU_SOURCES]
    cxx = os.environ.get("CXX", "c++")
    for define in ("CUDA_KERNEL", "ROCM_KERNEL"):
        jobs.append((BINDING, [cxx, "-std=c++20", "-fsyntax-only", f"-D{define}",
                               "-DTORCH_EXTENSION_NAME=_triattention_cuda_check", *inc, str(BINDING)]))
    for src in HOST_SOURCES:
        jobs.append((src, [cxx, "-std=c++20", "-fsyntax-only", "-Wall", "-Werror", "-DCUDA_KERNEL", *inc,
                           f"-I{cuda_include()}", str(src)]))
    checks = []
    for src, cmd in jobs:
        key = vc.digest([src, *HEADERS, " ".join(cmd), version])
        stamp = WORK / (hashlib.sha1(" ".join(cmd).encode()).hexdigest()[:12] + ".ok")
        if not args.force and stamp.exists() and stamp.read_text() == key:
            print(f"cached ok: {src.relative_to(ROOT)} ({Path(cmd[0]).name})")
        else:
            checks.append((src.relative_to(ROOT), Path(cmd[0]).name, cmd, None, stamp, key))
    # nvcc of score_keys.cu alone is most of the time: the other files share the second core.
    failed = vc.run_compile_checks(checks)
    print(json.dumps({"nvcc": version, "archs": args.archs, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
