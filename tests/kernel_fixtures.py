"""Fixtures for tests of the compiled kernel: build the CPU variant once per session and load it with `get_kernel`.

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


@pytest.fixture(scope="session")
def kernel(cpu_variant):
    """The CPU variant loaded through ``kernels.get_kernel`` with ``LOCAL_KERNELS`` pointing at ``build/``."""
    from kernels import get_kernel

    old = os.environ.get("LOCAL_KERNELS")
    os.environ["LOCAL_KERNELS"] = f"{REPO_ID}={cpu_variant.parent}"
    try:
        module = get_kernel(REPO_ID, version=1)
    finally:
        if old is None:
            del os.environ["LOCAL_KERNELS"]
        else:
            os.environ["LOCAL_KERNELS"] = old
    return module


@pytest.fixture(scope="session")
def kernel_ops(kernel):
    """The generated ``_ops`` module of the loaded kernel (``ops`` and ``add_op_namespace_prefix``)."""
    return importlib.import_module(kernel.__name__ + "._ops")


@pytest.fixture(scope="session")
def reference_ops():
    """``triattention.reference_ops`` from the source tree (the pure-torch contract)."""
    try:
        from triattention import reference_ops as ref
    except ImportError:
        sys.path.insert(0, str(ROOT / "torch-ext"))
        from triattention import reference_ops as ref
    return ref
