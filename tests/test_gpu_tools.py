"""The GPU-run tooling that can be checked without a GPU: the README table from a recorded bench_kernels.json, the
adoption rule gpu_check applies to a --tune sweep, the crash bisection, and the whole check rehearsed with --dry."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402
import gpu_findings  # noqa: E402


def test_kernel_table_from_the_second_gpu_session():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_table.py"),
                           str(ROOT / "docs" / "gpu" / "session2" / "bench_kernels.json")],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("NVIDIA H200, torch 2.11.0+cu130")
    score_b1 = next(ln for ln in lines if ln.startswith("| `score_keys` | B 1,"))
    assert "8.7 / 28.6 / 84.8 µs" in score_b1 and "2491 (52 %)" in score_b1 and "3363 (70 %)" in score_b1
    compact_b8 = "| `compact_`, K and V 2176 → 2048 | B 8 | 65.5 µs | 2048 (43 %) | 3.1x"
    assert any(ln.startswith(compact_b8) for ln in lines)


def test_kernel_table_puts_a_same_size_copy_beside_the_op():
    import kernel_table
    data = json.loads((ROOT / "docs" / "gpu" / "session2" / "bench_kernels.json").read_text())
    b8 = data["results"]["compact"][1]
    b8.update(copy_ms=0.05, ms_write_flush=0.07)  # the op: 65.5 us at 42.7 % of HBM; the copy moves the same bytes
    line = next(ln for ln in kernel_table.rows(data["results"]) if ln.startswith("| `compact_`") and "| B 8 |" in ln)
    assert line.endswith("| 70.0 µs | 50.0 µs (56 %) |")  # 42.7 % * 65.5 / 50


def test_kernel_table_names_a_missing_file_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_table.py"), str(tmp_path / "none.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot read" in proc.stderr


def _row(op, n, tune, ms, same=True):
    return {"op": op, "B": 1, "N": n, "tune": tune, "ms": ms, "same": same}


def _score_sweep():
    return [
        _row("score_keys", 32768, "built-in", 0.0286), _row("score_keys", 131072, "built-in", 0.0848),
        # faster on both shapes: adopted, with the geometric mean of 0.0286/0.020 and 0.0848/0.070
        _row("score_keys", 32768, "score_stages=4", 0.020), _row("score_keys", 131072, "score_stages=4", 0.070),
        # faster still on one shape but its output differs there: never adopted
        _row("score_keys", 32768, "score_stages=6", 0.015, same=False),
        _row("score_keys", 131072, "score_stages=6", 0.05),
    ]


def test_adoption_needs_identical_output_everywhere_and_a_gain_beyond_noise():
    rows = _score_sweep() + [
        _row("compact_", 2048, "built-in", 0.0655),
        _row("compact_", 2048, "compact_slice=128", 0.0645),  # 1.6 %: within the noise
    ]
    got = gpu_findings.fastest_settings(rows)
    adopt = got["adopt"]
    assert set(adopt) == {"score_keys"}
    assert adopt["score_keys"]["tune"] == "score_stages=4"
    assert adopt["score_keys"]["geomean_speedup"] == round(((0.0286 / 0.020) * (0.0848 / 0.070)) ** 0.5, 3)
    per_shape = {r["N"]: r for r in got["per_shape"] if r["op"] == "score_keys"}
    assert per_shape[32768]["tune"] == "score_stages=4" and per_shape[32768]["differs"] == ["score_stages=6"]
    assert per_shape[131072]["tune"] == "score_stages=6"  # identical there, and fastest


def test_first_culprit_bisects_to_the_test_that_arms_a_real_crash(tmp_path):
    """A module whose test_victim dereferences NULL (a real SIGSEGV) once test_arm ran earlier in the process: the
    search finds test_arm among eight earlier tests, and the victim alone passes."""
    names = [f"test_{i}" for i in range(8)]
    names[5] = "test_arm"
    body = "import ctypes\nARMED = []\n\n"
    for name in names:
        body += f"def {name}():\n    {'ARMED.append(1)' if name == 'test_arm' else 'pass'}\n\n"
    body += "def test_victim():\n    if ARMED:\n        ctypes.string_at(0)\n"
    module = tmp_path / "test_armed.py"
    module.write_text(body)

    def crashes(ids):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        return proc.returncode < 0

    ids = [f"test_armed.py::{n}" for n in names]
    got = gpu_findings.first_culprit(crashes, ids, "test_armed.py::test_victim")
    assert got["alone"] == "passes" and got["culprit"] == "test_armed.py::test_arm" and got["confirmed_alone"]
    assert len(got["trials"]) <= 2 + 3  # alone, log2(8) halvings, the confirmation


def test_first_culprit_when_the_victim_crashes_alone():
    got = gpu_findings.first_culprit(lambda ids: True, ["a", "b"], "v")
    assert got["alone"] == "crashes" and got["culprit"] is None and len(got["trials"]) == 1


def test_kernel_table_shows_the_sweep_and_the_adopted_setting():
    import kernel_table

    rows = _score_sweep()
    for r in rows:
        r["pct_hbm"] = round(100 * 0.0286 / r["ms"] * 0.52, 1)
    lines = kernel_table.sweep_rows(rows)
    assert lines[0] == ("| `score_keys` | B 1, N 32K | 28.6 µs (52 %) | `score_stages=4`: 20.0 µs (74 %) | "
                        "`score_stages=4`: 20.0 µs (74 %) |")
    # at 131K the faster setting differs in its output elsewhere, so the fastest identical one is named per shape
    assert lines[1].startswith("| `score_keys` | B 1, N 128K | 84.8 µs") and "`score_stages=6`: 50.0 µs" in lines[1]
    assert lines[1].endswith("`score_stages=4`: 70.0 µs (21 %) |")


def test_gpu_check_rehearses_every_step_on_the_cpu(tmp_path):
    """`gpu_check.sh --dry` (what a GPU session runs, on this CPU: the CPU variant, its tests, the tuned runs, the
    kernel benchmark with the sweep) passes every step, so a broken harness is found here and not on a device."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry", "--e2e-cmd", ""], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    steps = {name: step.get("ok") for name, step in results["steps"].items()}
    assert proc.returncode == 0 and all(steps.values()), (steps, proc.stdout[-3000:])
    assert set(steps) == {"env", "wheels", "build", "probe", "tests", "tuned", "bench", "history"}
    assert results["steps"]["history"]["result"] == {"skipped": "no test crashed"}
    tuned = results["steps"]["tuned"]["result"]["runs"]
    assert set(tuned) == set(gpu_check.TUNED_TESTS) and all(r["counts"].get("passed") for r in tuned.values())
    sweep = results["bench_kernels"]["tuning"]
    assert {r["tune"] for r in sweep} == {"built-in", *gpu_check.BENCH_TUNE} and all(r["same"] for r in sweep)
