"""build.toml, flake.nix and the shared math header, checked with the kernel-builder schema embedded in kernels."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # the build scripts, imported by two tests below


@pytest.fixture(scope="module")
def config():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "build.toml").read_text())


@pytest.mark.kernels_ci
def test_build_toml_parses_with_kernel_builder_schema():
    from kernels._rust import Backend, Build

    build = Build.open(ROOT)  # rejects unknown keys and editions other than 5
    assert set(build.general.backends) == {Backend.CPU, Backend.CUDA, Backend.ROCm}


def test_build_toml_sources(config):
    assert config["general"]["name"] == "triattention" and config["general"]["version"] == 1
    assert config["general"]["hub"]["repo-id"] == "triattention-community/triattention"
    kernels = config["kernel"]
    by_backend = {k["backend"]: k for k in kernels.values()}
    assert set(by_backend) == {"cpu", "cuda", "rocm"}
    # ROCm hipifies the CUDA sources.
    assert by_backend["cuda"]["src"] == by_backend["rocm"]["src"]
    listed = {s for k in kernels.values() for s in k["src"]} | set(config["torch"]["src"])
    for src in listed:
        assert (ROOT / src).is_file(), src
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "kernel_src").rglob("*") if p.suffix in (".cu", ".cpp", ".h", ".cuh")}
    assert on_disk <= listed, f"sources not listed in build.toml: {sorted(on_disk - listed)}"
    for kernel in kernels.values():
        assert "kernel_src/triattention_math.h" in kernel["src"]


def test_flake():
    text = (ROOT / "flake.nix").read_text()
    assert 'kernel-builder.url = "github:huggingface/kernels";' in text
    assert re.search(r"kernel-builder\.lib\.genKernelFlakeOutputs\s*\{\s*inherit self;\s*path = \./\.;\s*\}", text)
    nix = shutil.which("nix-instantiate")
    if nix is None:
        pytest.skip("nix-instantiate not installed (apt-get install nix-bin): syntax not checked")
    proc = subprocess.run([nix, "--parse", str(ROOT / "flake.nix")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_device_code_includes_no_torch_headers():
    """The .cu/.cuh files hold kernels and launchers only (launch.h is their boundary): checks, guards and every
    exception live in host-compiled ops.cpp, so no C++ exception is ever thrown through nvcc-compiled frames."""
    device_files = sorted((ROOT / "kernel_src").rglob("*.cu")) + sorted((ROOT / "kernel_src").rglob("*.cuh"))
    device_files.append(ROOT / "kernel_src" / "triattention_cuda" / "launch.h")
    assert len(device_files) >= 5
    for path in device_files:
        text = path.read_text()
        for line in text.splitlines():
            include = re.match(r'\s*#\s*include\s*[<"]([^>"]+)', line)
            if include:
                assert not re.match(r"(ATen|c10|torch)/", include.group(1)), f"{path.name}: {line.strip()}"
        assert "TORCH_CHECK" not in text and "throw " not in text, path.name


def test_cuda_tuning_settings_parse(tmp_path):
    """TRIATTENTION_CUDA_TUNE (kernel_src/triattention_cuda/tuning.h) accepts the documented settings and names the
    bad part otherwise; compiled with the host compiler alone, as the header promises."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx!r})")
    src = tmp_path / "t.cpp"
    src.write_text('''#include <cstdio>
#include "triattention_cuda/tuning.h"
int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    triattention::cuda::Tuning t;
    const std::string err = triattention::cuda::parse_tuning(argv[i], t);
    std::printf("%d %d %d %d %d %d|%s\\n", t.score_waves, t.score_stages, t.compact_slice, t.compact_pipeline,
                t.compact_stages, t.compact_chunk, err.c_str());
  }
}
''')
    exe = tmp_path / "t"
    subprocess.run([cxx, "-std=c++17", "-Wall", "-Werror", f"-I{ROOT / 'kernel_src'}", str(src), "-o", str(exe)],
                   check=True)
    cases = ["", "score_waves=2,score_stages=4,compact_slice=128,compact_pipeline=1", "compact_slice=96", "score_waves=",
             "waves=2", "compact_pipeline=1,", "score_stages=0", "compact_stages=3", "compact_stages=9",
             "compact_chunk=32768,compact_stages=2", "compact_chunk=0", "compact_chunk=2048", "compact_chunk=24576"]
    lines = subprocess.run([str(exe), *cases], check=True, capture_output=True, text=True).stdout.splitlines()
    assert lines[0] == "-1 -1 -1 -1 -1 -1|"  # every choice built-in
    assert lines[1] == "2 4 128 1 -1 -1|"
    assert lines[2].startswith("-1 -1 -1 -1 -1 -1|TRIATTENTION_CUDA_TUNE: bad setting 'compact_slice=96' (expected")
    assert "bad setting 'score_waves='" in lines[3]
    assert "bad setting 'waves=2'" in lines[4]
    assert lines[5] == "-1 -1 -1 1 -1 -1|"
    assert "bad setting 'score_stages=0'" in lines[6]
    assert lines[7] == "-1 -1 -1 -1 3 -1|"
    assert "bad setting 'compact_stages=9'" in lines[8]
    assert lines[9] == "-1 -1 -1 -1 2 32768|"
    assert lines[10] == "-1 -1 -1 -1 -1 0|"  # 0: the column slices, explicitly
    assert "bad setting 'compact_chunk=2048'" in lines[11] and "compact_chunk=0|4096|8192|..|65536" in lines[11]
    assert "bad setting 'compact_chunk=24576'" in lines[12]  # not a power of two


def test_math_header_compiles_without_cuda(tmp_path):
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx!r})")
    src = tmp_path / "t.cpp"
    src.write_text('#include "triattention_math.h"\nint main() { return triattention::math::pair_norm(3.f, 4.f) == 5.f ? 0 : 1; }\n')
    exe = tmp_path / "t"
    subprocess.run([cxx, "-std=c++17", "-Wall", "-Werror", f"-I{ROOT / 'kernel_src'}", str(src), "-o", str(exe)], check=True)
    subprocess.run([str(exe)], check=True)


def test_cuda_variant_content_id_follows_the_sources_not_git(tmp_path):
    """--content-id (gpu_check, prebuild_gpu_variant): a copy of the sources without git (as the GPU machine's copy
    may look to git) names the ops as this checkout does, so a carried prebuilt variant is up to date there; one
    changed byte of a kernel source, or other archs, name them differently."""
    import build_cuda_variant

    copy = tmp_path / "repo"
    for part in ("scripts", "kernel_src", "torch-ext"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "build.toml", copy / "build.toml")
    probe = ("import sys; sys.path.insert(0, 'scripts'); import build_cuda_variant as b; "
             "print(b.content_id(['9.0']), b.vc.git_unique_id()); "
             "f = b.ROOT / 'kernel_src/triattention_cuda/compact.cu'; f.write_text(f.read_text() + '\\n'); "
             "print(b.content_id(['9.0']), b.content_id(['8.0']))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=copy, capture_output=True, text=True,
                          env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (copied, git_there), (edited, other_archs) = (line.split() for line in proc.stdout.splitlines())
    here = build_cuda_variant.content_id(["9.0"])
    assert re.fullmatch(r"h[0-9a-f]{10}", here)
    assert git_there == "local" and copied == here  # git cannot name this copy; its content names it as here
    assert len({here, edited, other_archs}) == 3


def test_a_build_leaves_only_its_own_library_in_the_work_dir(tmp_path):
    import variant_common

    libs = [tmp_path / f"_triattention_cuda_{rev}.abi3.so" for rev in ("113639a", "c1ab74c_dirty", "h0123456789")]
    for lib in libs:
        lib.write_bytes(b"\x7fELF")
    (tmp_path / "ops.o").write_bytes(b"obj")
    assert variant_common.prune_libraries(tmp_path, keep=libs[2]) == [libs[0].name, libs[1].name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_triattention_cuda_h0123456789.abi3.so", "ops.o"]


@pytest.mark.skipif(os.environ.get("TRIATTENTION_CHECK_NVCC") != "1",
                    reason="nvcc compile check takes ~50 s uncached: set TRIATTENTION_CHECK_NVCC=1 (or run scripts/check_nvcc.py)")
def test_cuda_sources_compile_with_nvcc():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_nvcc.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:]


def test_nvcc_check_fails_a_kernel_that_spills_registers(tmp_path):
    """check_nvcc's ptxas guard turns a register spill (local-memory traffic) into a compile error that names it."""
    import check_nvcc
    try:
        nvcc = check_nvcc.cuda_build.nvcc_path()  # the nvcc check_nvcc and the CUDA build use
    except SystemExit as err:
        pytest.skip(str(err))
    src = tmp_path / "spill.cu"
    src.write_text("""__global__ void k(float* o, const float* a) {
  float r[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) r[i] = a[threadIdx.x * 64 + i] * a[i];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 64; ++i) s += r[i] * r[63 - i] + r[(i * 7) % 64];
  o[threadIdx.x] = s;
}
""")
    base = [nvcc, *check_nvcc.PTXAS_GUARD, "-gencode=arch=compute_90,code=sm_90", "-c", str(src),
            "-o", str(tmp_path / "spill.o")]
    assert subprocess.run(base, capture_output=True, text=True).returncode == 0  # fits in registers as written
    proc = subprocess.run(base + ["-maxrregcount=24"], capture_output=True, text=True)
    assert proc.returncode != 0 and "spilled to local memory" in proc.stderr, proc.stderr


@pytest.mark.skipif(os.environ.get("TRIATTENTION_CHECK_HIPCC") != "1",
                    reason="hipcc compile check takes ~50 s uncached: set TRIATTENTION_CHECK_HIPCC=1 (or run scripts/check_hipcc.py)")
def test_rocm_sources_compile_with_hipcc():
    """The ROCm kernel's .cu files, hipified as the builder does, compile for AMD GPUs (wave64 and wave32)."""
    if shutil.which("hipcc") is None:
        pytest.skip("hipcc not installed (Debian: apt-get install hipcc; .ci/run installs it)")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_hipcc.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
