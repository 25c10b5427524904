"""Fixtures for tests of the compiled kernel: build the CPU variant once per session and load it with `get_kernel`.

The CUDA variant is not built here (that needs nvcc and a CUDA torch): ``cuda_variant`` takes the variant dir in
``TRIATTENTION_VARIANT_DIR`` (what ``scripts/gpu_check.py`` sets after ``scripts/build_cuda_variant.py``), else a
``build/torch<MM>-cxx11-cu*`` dir made for this torch, and skips CUDA cases when there is no GPU or no variant.

Imported by test modules (``from kernel_fixtures import ...``); pytest puts ``tests/`` on ``sys.path``.
"""
import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "triattention-community/triattention"


def _build_module():
    spec = importlib.util.spec_from_file_location("build_cpu_variant", ROOT / "scripts" / "build_cpu_variant.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cpu_variant() -> Path:
    """Path of ``build/torch<MAJ><MIN>-cxx11-cpu-<arch>-linux``, built (or found up to date) by the build script."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx!r} not on PATH): cannot build the CPU variant")
    if shutil.which("ninja") is None and shutil.which("ninja", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("ninja not found: cannot build the CPU variant")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    builder = _build_module()
    return builder.build(ROOT / "build", builder.git_unique_id(), verbose=False)


def _get_kernel(variant: Path, backend: str):
    """``kernels.get_kernel`` with ``LOCAL_KERNELS`` pointing at the build root that holds ``variant``."""
    from kernels import get_kernel

    old = os.environ.get("LOCAL_KERNELS")
    os.environ["LOCAL_KERNELS"] = f"{REPO_ID}={variant.parent}"
    try:
        module = get_kernel(REPO_ID, version=1, backend=backend)
    finally:
        if old is None:
            del os.environ["LOCAL_KERNELS"]
        else:
            os.environ["LOCAL_KERNELS"] = old
    assert Path(module.__file__).parent == variant, (module.__file__, variant)
    return module


@pytest.fixture(scope="session")
def kernel(cpu_variant):
    """The CPU variant loaded through ``kernels.get_kernel`` with ``LOCAL_KERNELS`` pointing at ``build/``."""
    return _get_kernel(cpu_variant, "cpu")


@pytest.fixture(scope="session")
def kernel_ops(kernel):
    """The generated ``_ops`` module of the loaded kernel (``ops`` and ``add_op_namespace_prefix``)."""
    return importlib.import_module(kernel.__name__ + "._ops")


def find_cuda_variant():
    """``TRIATTENTION_VARIANT_DIR``, else ``build/torch<MM>-cxx11-cu<VVV>-*`` for this torch, else None."""
    import torch

    env = os.environ.get("TRIATTENTION_VARIANT_DIR")
    if env:
        return Path(env).resolve()
    if not torch.version.cuda:
        return None
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    cu = "cu" + "".join(torch.version.cuda.split(".")[:2])
    found = sorted((ROOT / "build").glob(f"torch{major}{minor}-cxx11-{cu}-*"))
    return found[0] if found else None


@pytest.fixture(scope="session")
def cuda_variant() -> Path:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    variant = find_cuda_variant()
    if variant is None or not (variant / "metadata.json").exists():
        pytest.skip("no CUDA variant: run scripts/build_cuda_variant.py or set TRIATTENTION_VARIANT_DIR")
    return variant


@pytest.fixture(scope="session")
def cuda_kernel(cuda_variant):
    return _get_kernel(cuda_variant, "cuda")


@pytest.fixture(scope="session")
def cuda_kernel_ops(cuda_kernel):
    return importlib.import_module(cuda_kernel.__name__ + "._ops")


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Each contract test runs on every backend: the CPU variant, and the CUDA variant when there is one."""
    if request.param == "cuda":
        request.getfixturevalue("cuda_variant")  # skips with the reason when there is no GPU or no variant
    return request.param


@pytest.fixture
def device_ops(request, device):
    """The compiled ops of ``device``'s variant."""
    return request.getfixturevalue("kernel_ops" if device == "cpu" else "cuda_kernel_ops").ops


@pytest.fixture(scope="session")
def reference_ops():
    """``triattention.reference_ops`` from the source tree (the pure-torch contract)."""
    try:
        from triattention import reference_ops as ref
    except ImportError:
        sys.path.insert(0, str(ROOT / "torch-ext"))
        from triattention import reference_ops as ref
    return ref
