#!/usr/bin/env python
"""Does a C++ error raised inside an op reach Python as a RuntimeError here, or kill the process?

On the first GPU machine, bad arguments to the CUDA variant's ops crashed the process (SIGSEGV) where the CPU
variant raises. Each case below runs in its own subprocess, so one crash does not hide the others:

  torch_cpu / torch_cuda  a built-in op's error (torch itself throwing through its own frames)
  kernel_cpu              the CPU variant's score_keys with rotary_dim 63 (built here if missing; on a GPU machine
                          only when a CUDA variant case crashed)
  kernel_cuda_host        the CUDA variant's score_keys entry reached with CPU tensors (redispatch to the CUDA key)
                          after CUDA is initialised: its first check throws with no CUDA tensor involved; this
                          raised on a CPU-only machine with the GPU image's torch (2.11.0+cu130, Python 3.12), old
                          and new code alike. Raises here but kernel_cuda crashes: CUDA tensors matter
  kernel_cuda             the CUDA variant's score_keys with rotary_dim 63
  kernel_cuda_compact     the CUDA variant's compact_ with indices of the wrong shape

Crashed kernel cases run again with TORCH_SHOW_CPP_STACKTRACES=1 (torch's own unwinder captures the stack instead
of glibc's backtrace) and, when gdb exists, under gdb for the native stack. The variants load through
LOCAL_KERNELS (default: build/). Prints one JSON object; exit status 0 when every case raised as it should.

Usage: python scripts/throw_probe.py [--dry] [--json PATH]      (--dry: the CPU cases only)
       python scripts/throw_probe.py --case NAME                  (one case in this process)
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "triattention-community/triattention"
CUDA_CASES = ["torch_cuda", "kernel_cuda_host", "kernel_cuda", "kernel_cuda_compact"]
CPU_CASES = ["torch_cpu", "kernel_cpu"]


def _ops(backend: str):
    import importlib

    from kernels import get_kernel

    os.environ.setdefault("LOCAL_KERNELS", f"{REPO_ID}={ROOT / 'build'}")
    kernel = get_kernel(REPO_ID, version=1, backend=backend)
    return importlib.import_module(kernel.__name__ + "._ops").ops


# A part of each case's own error message: any other RuntimeError (no driver, no variant) is not the answer.
EXPECTED = {"torch_cpu": "shape '[3]' is invalid", "torch_cuda": "shape '[3]' is invalid", "kernel_cpu": "rotary_dim",
            "kernel_cuda": "rotary_dim", "kernel_cuda_host": "keys must be a CUDA tensor",
            "kernel_cuda_compact": "must be [B=1, H=2"}


def run_case(name: str) -> None:
    """Raise the case's error; print the message when it arrives as the expected RuntimeError (exit 4 on another)."""
    import torch

    device = "cuda" if "cuda" in name and name != "kernel_cuda_host" else "cpu"
    try:
        if name == "kernel_cuda_host":
            keys, trig, norm = torch.randn(1, 2, 10, 64), torch.randn(1, 6, 1, 64), torch.randn(1, 6, 32)
            if torch.cuda.is_available():  # the process state of the crashing case: CUDA initialised
                torch.zeros(1, device="cuda")
            cuda_key = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
            _ops("cuda").score_keys.default.redispatch(cuda_key, torch.empty(1, 6, 10), keys, trig, norm, 63, False)
        elif name.startswith("torch_"):
            torch.empty(2, device=device).view(3)
        elif name.endswith("_compact"):
            cache = torch.zeros(1, 1, 8, 4, device=device)
            _ops(device).compact_([cache], torch.zeros(1, 2, 1, dtype=torch.int64, device=device))
        else:
            ops = _ops(device)
            keys = torch.randn(1, 2, 10, 64, device=device)
            trig, norm = torch.randn(1, 6, 1, 64, device=device), torch.randn(1, 6, 32, device=device)
            ops.score_keys(torch.empty(1, 6, 10, device=device), keys, trig, norm, 63, False)
    except RuntimeError as err:
        message = str(err).splitlines()[0] if str(err) else ""
        if EXPECTED[name] not in message:
            print("RAISED ANOTHER ERROR:", message)
            sys.exit(4)
        print("RAISED:", message)
        return
    print("NOT RAISED")
    sys.exit(3)


def _status(rc: int) -> str:
    if rc == 0:
        return "raised"
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    return f"exit {rc}"


def probe(name: str, env: dict, timeout: float = 120) -> dict:
    cmd = [sys.executable, "-X", "faulthandler", __file__, "--case", name]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "ok": False}
    out = (proc.stdout + proc.stderr).strip()
    return {"status": _status(proc.returncode), "ok": proc.returncode == 0, "output": out[-1500:]}


def gdb_stack(name: str, env: dict) -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        return "gdb not installed"
    cmd = [gdb, "-batch", "-nx", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40", "--args",
           sys.executable, __file__, "--case", name]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "gdb timed out"
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("#") or "signal" in ln]
    return "\n".join(lines[-45:])


def ensure_cpu_variant() -> str:
    """Build the CPU variant into build/ when it is missing (about a minute); returns the build's last line."""
    proc = subprocess.run([sys.executable, "scripts/build_cpu_variant.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"CPU variant build failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CPU_CASES + CUDA_CASES, help="run one case in this process")
    parser.add_argument("--dry", action="store_true", help="CPU cases only (no GPU needed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.case:
        run_case(args.case)
        return 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("LOCAL_KERNELS", f"{REPO_ID}={ROOT / 'build'}")
    results = {"cases": {}}

    def run(name):
        entry = probe(name, env)
        if not entry["ok"] and name.startswith("kernel_"):
            entry["with_torch_unwinder"] = probe(name, dict(env, TORCH_SHOW_CPP_STACKTRACES="1"))
            entry["gdb"] = gdb_stack(name, env)
        results["cases"][name] = entry
        print(f"{name}: {entry['status']}", flush=True)

    for name in ["torch_cpu"] + ([] if args.dry else CUDA_CASES):
        run(name)
    # The CPU variant (a minute to build on a GPU machine) only matters when a CUDA variant case crashed: does any
    # throw from our library crash in this environment, or only the CUDA one?
    if args.dry or not all(results["cases"][c]["ok"] for c in CUDA_CASES if c.startswith("kernel_")):
        results["cpu_variant"] = ensure_cpu_variant()
        run("kernel_cpu")
    results["ok"] = all(c["ok"] for c in results["cases"].values())
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
