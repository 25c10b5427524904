#!/usr/bin/env python
"""Compile-only check of the ROCm kernels: the .cu files of build.toml's rocm kernel, hipified as kernel-builder
does (torch's hipify over a copy of kernel_src), compiled by hipcc for AMD GPUs (device code and launchers; the
host entries need ATen's HIP headers, which no CPU torch ships: check_nvcc.py syntax-checks the binding under
ROCM_KERNEL).

Debian's hipcc is ROCm 5.2 (clang 15), far older than the builder's ROCm 7, so archs it does not know are left out
and a pass is necessary, not sufficient. Results are cached by a hash of the inputs in ``_build_cpu/hip-check/``.
Exit status 0 = every file compiled.

Usage: python scripts/check_hipcc.py [--archs gfx906 gfx90a gfx1030] [--force]
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import variant_common as vc  # noqa: E402

ROOT = vc.ROOT
WORK = ROOT / "_build_cpu" / "hip-check"
# Of the builder's default ROCm archs, those Debian's device libraries cover: wave64 (gfx906, gfx90a), wave32 (gfx1030).
ARCHS = ["gfx906", "gfx90a", "gfx1030"]
FLAGS = ["-std=c++20", "-O3", "-fPIC", "-DROCM_KERNEL", "-DUSE_ROCM"]


def hipcc_path() -> str:
    hipcc = shutil.which("hipcc")
    if hipcc is None:
        raise SystemExit("hipcc not found (Debian: apt-get install hipcc)")
    return hipcc


def hipify(sources: list) -> dict:
    """Copies kernel_src to WORK/src and hipifies the sources there (and the headers they include); returns
    {original source: hipified file}."""
    from torch.utils.hipify.hipify_python import hipify as run_hipify

    src_root = WORK / "src"
    shutil.rmtree(src_root, ignore_errors=True)
    shutil.copytree(ROOT / "kernel_src", src_root / "kernel_src")
    copies = {s: src_root / s.relative_to(ROOT) for s in sources}
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every file it touches
        result = run_hipify(project_directory=str(src_root), output_directory=str(src_root),
                            includes=[str(src_root / "*")], extra_files=[str(c) for c in copies.values()],
                            show_detailed=False, is_pytorch_extension=True, hipify_extra_files_only=True)
    out = {}
    for original, copy in copies.items():
        entry = result.get(str(copy)) or result.get(os.path.abspath(str(copy)))
        out[original] = Path(entry.hipified_path) if entry is not None and entry.hipified_path else copy
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    hipcc = hipcc_path()
    env = dict(os.environ, HIP_PLATFORM="amd")  # hipcc would pick NVIDIA where nvcc is installed
    version = subprocess.run([hipcc, "--version"], capture_output=True, text=True, env=env).stdout.strip()
    version = version.splitlines()[0] if version else "unknown"
    sources, headers, _ = vc.kernel_files("rocm")
    cu_sources = [s for s in sources if s.suffix == ".cu"]
    WORK.mkdir(parents=True, exist_ok=True)
    # One job per (file, arch), so the two cores share score_keys.cu (most of the time) too.
    jobs = [(src, arch) for src in cu_sources for arch in args.archs]
    inputs = [*headers, *sorted((ROOT / "kernel_src").rglob("*.cuh"))]
    keys = {job: vc.digest([job[0], *inputs, " ".join(FLAGS), job[1], version]) for job in jobs}
    stamps = {job: WORK / f"{job[0].stem}.{job[1]}.ok" for job in jobs}
    todo = [j for j in jobs if args.force or not stamps[j].exists() or stamps[j].read_text() != keys[j]]
    for src, arch in jobs:
        if (src, arch) not in todo:
            print(f"cached ok: {src.relative_to(ROOT)} (hipcc, {arch})")
    hipified = hipify(sorted({src for src, _ in todo})) if todo else {}

    checks = [(src.relative_to(ROOT), f"hipcc, {arch}",
               [hipcc, *FLAGS, f"--offload-arch={arch}", "-c", str(hipified[src]),
                "-o", str(WORK / f"{src.stem}.{arch}.o")], env, stamps[(src, arch)], keys[(src, arch)])
              for src, arch in todo]
    failed = vc.run_compile_checks(checks)
    print(json.dumps({"hipcc": version, "archs": args.archs, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
