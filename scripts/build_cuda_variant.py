#!/usr/bin/env python
"""Build the CUDA variant of the triattention kernel without Nix, laid out as kernel-builder lays it out.

Needs a CUDA build of torch and nvcc. Output: ``build/torch<MAJ><MIN>-cxx11-cu<VVV>-<arch>-linux/`` holding
``_triattention_cuda_<id>.abi3.so``, ``_ops.py``, the Python files of ``torch-ext/triattention`` and
``metadata.json`` with the CUDA archs (layout: variant_common.py). Load it with
``LOCAL_KERNELS=triattention-community/triattention=<build root>`` and
``kernels.get_kernel("triattention-community/triattention", version=1)``.

The .cu files of build.toml's cuda kernel are compiled with nvcc (the flags torch.utils.cpp_extension uses), the
binding with the host compiler, in parallel by ninja. Default arch: the local GPU's compute capability only,
which keeps a build around a minute; ``--archs 8.0 9.0`` builds others (no GPU needed then).

``--content-id`` names the ops after a hash of the build's inputs instead of the git revision: scripts/gpu_check.py
and scripts/prebuild_gpu_variant.sh use it, so a variant built here and carried to a GPU machine is found up to date
there even where that machine's git reports another revision or changed files.

Usage: python scripts/build_cuda_variant.py [--archs 9.0 ...] [--out build] [--unique-id ID | --content-id] [--force]
                                            [-j N]
"""
import argparse
import os
import platform
import shutil
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import variant_common as vc  # noqa: E402

ROOT = vc.ROOT
SOURCES, HEADERS, KERNEL = vc.kernel_files("cuda")
# torch.utils.cpp_extension's COMMON_NVCC_FLAGS plus what kernel-builder adds for a CUDA kernel.
NVCC_FLAGS = ["-std=c++20", "-O3", "--expt-relaxed-constexpr", "-DCUDA_KERNEL", "-D__CUDA_NO_HALF_OPERATORS__",
              "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__", "-Xcompiler", "-fPIC"] + KERNEL.get("cuda-flags", [])
CXX_FLAGS = ["-O3", "-std=c++20", "-fPIC", "-DCUDA_KERNEL", "-DPy_LIMITED_API=0x03090000", "-Wall",
             "-Wno-unused-function"]
WORK = ROOT / "_build_cuda"


def nvcc_path() -> str:
    from torch.utils import cpp_extension

    candidates = [shutil.which("nvcc"), "/usr/local/bin/nvcc"]
    if cpp_extension.CUDA_HOME:
        candidates.insert(0, str(Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"))
    for c in candidates:
        if c and Path(c).exists():
            return c
    raise SystemExit("nvcc not found (set CUDA_HOME or put nvcc on PATH)")


def local_archs() -> list:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: pass --archs (e.g. --archs 9.0)")
    major, minor = torch.cuda.get_device_capability()
    return [f"{major}.{minor}"]


def gencode(archs) -> list:
    """nvcc -gencode flags for archs like '9.0' (SASS) or '9.0+PTX' (SASS and PTX)."""
    flags = []
    for arch in archs:
        num = arch.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def variant_name() -> str:
    import torch

    if not torch.version.cuda:
        raise SystemExit(f"torch {torch.__version__} is not a CUDA build")
    major, minor = torch.version.cuda.split(".")[:2]
    return f"{vc.torch_prefix()}-cu{major}{minor}-{platform.machine()}-{sys.platform}"


def include_flags(extra_dirs) -> list:
    from torch.utils import cpp_extension

    try:
        torch_dirs = cpp_extension.include_paths(device_type="cuda")
    except TypeError:  # torch < 2.6 spelled it cuda=True
        torch_dirs = cpp_extension.include_paths(cuda=True)
    dirs = [str(d) for d in extra_dirs] + [str(ROOT / "kernel_src"), str(ROOT / "torch-ext")]
    return [f"-I{d}" for d in dirs + torch_dirs + [sysconfig.get_paths()["include"]]]


def ninja_lines(ops_name: str, so_path: Path, archs) -> list:
    import torch
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    defs = [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-DTORCH_EXTENSION_NAME={ops_name}"]
    inc = include_flags([WORK / "include"])
    try:
        lib_dirs = cpp_extension.library_paths(device_type="cuda")
    except TypeError:
        lib_dirs = cpp_extension.library_paths(cuda=True)
    ldflags = ["-shared"] + [f"-L{d}" for d in lib_dirs]
    ldflags += ["-lc10", "-lc10_cuda", "-ltorch_cpu", "-ltorch_cuda", "-ltorch", "-lcudart"]
    lines = [
        f"nvcc = {nvcc_path()}",
        f"cxx = {os.environ.get('CXX', 'c++')}",
        f"nvflags = {' '.join(NVCC_FLAGS + gencode(archs) + defs + inc)}",
        f"cflags = {' '.join(CXX_FLAGS + defs + inc)}",
        f"ldflags = {' '.join(ldflags)}",
        "rule nvcc",
        "  command = $nvcc -MD -MF $out.d $nvflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
    ] + vc.HOST_RULES
    objs = [str(WORK / (src.stem + (".cu.o" if src.suffix == ".cu" else ".o"))) for src in SOURCES]
    lines += [f"build {obj}: {'nvcc' if src.suffix == '.cu' else 'compile'} {src}" for obj, src in zip(objs, SOURCES)]
    return lines + vc.link_lines(WORK, objs, so_path)


def content_id(archs) -> str:
    """The --content-id suffix of a build for ``archs``: a hash of its sources, flags and archs."""
    return vc.content_unique_id(__file__, SOURCES + HEADERS, [NVCC_FLAGS, CXX_FLAGS, list(archs)])


def build(out_root: Path, unique_id=None, archs=None, force: bool = False, verbose: bool = True,
          jobs=None) -> Path:
    """Build (unless up to date) and return the variant dir; ``unique_id`` None: :func:`content_id`."""
    archs = list(archs or local_archs())
    unique_id = unique_id or content_id(archs)
    ops_name = f"_{vc.NAME}_cuda_{unique_id}"
    return vc.build_variant(__file__, WORK, out_root / variant_name(), ops_name, SOURCES + HEADERS,
                            [NVCC_FLAGS, CXX_FLAGS, archs, unique_id],
                            lambda so_path: ninja_lines(ops_name, so_path, archs),
                            {"type": "cuda", "archs": archs}, force, verbose, jobs=jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=None,
                        help="CUDA archs such as 9.0 or 9.0+PTX (default: the local GPU's capability)")
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="build root (default: build/)")
    naming = parser.add_mutually_exclusive_group()
    naming.add_argument("--unique-id", default=None, help="ops-name suffix (default: git short rev [+_dirty])")
    naming.add_argument("--content-id", action="store_true",
                        help="ops-name suffix from a hash of the build inputs (h + 10 hex digits), not from git")
    parser.add_argument("--force", action="store_true", help="rebuild even if inputs are unchanged")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs (ninja default)")
    args = parser.parse_args()
    t0 = time.time()
    unique_id = None if args.content_id else args.unique_id or vc.git_unique_id()
    variant = build(args.out, unique_id, archs=args.archs, force=args.force, jobs=args.jobs)
    print(f"{variant} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
