#!/usr/bin/env python
"""One command for a GPU machine: build the CUDA variant, test it, benchmark it, run the end-to-end benchmark.

Steps, each under one overall deadline and its own time limit; a failing or timed-out step is recorded and the
next one runs. ``$OUT/gpu_results.json`` (every figure) is rewritten after every step, so a run cut short keeps
what it measured; each step's output goes to ``$OUT/logs/<step>.log``.

  env     torch / CUDA / GPU / nvcc versions
  wheels  ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` when ``.whl/`` exists (wheels the
          GPU image lacks; scripts/fetch_gpu_wheels.sh), then /tmp/site goes first on PYTHONPATH
  build   scripts/build_cuda_variant.py --content-id for the local GPU's arch only (about a minute), into build/;
          up to date (seconds) when scripts/prebuild_gpu_variant.sh built the same sources and `build` was carried
  probe   scripts/throw_probe.py: does an op's C++ error reach Python (built-in, CPU variant, CUDA variant), or
          crash the process (then with torch's unwinder and under gdb)
  tests   pytest tests/test_compiled_ops.py -k cuda with TRIATTENTION_VARIANT_DIR = the built variant
  tuned   the score_keys and compact_ contract tests again under each TRIATTENTION_CUDA_TUNE of TUNED_TESTS
  bench   benchmarks/bench_kernels.py --device cuda --json $OUT/bench_kernels.json, plus the launch shapes of
          BENCH_TUNE (--tune) next to the built-in ones
  history when a test crashed in `tests` but not in the probe's fresh processes: the earlier test that makes it
          crash, by a binary search over the tests that ran before it (one pytest process per trial)
  e2e     --e2e-cmd (default: benchmarks/bench_e2e.py --device cuda --json $OUT/bench_e2e.json, skipped while
          that file does not exist)
  extra   every --extra-cmd, in order
Commands may use {python}, {out}, {device}, {variant} and {build}; they run from the repo root with
LOCAL_KERNELS and TRIATTENTION_VARIANT_DIR pointing at the built variant, and PYTHONPATH = [/tmp/site,]
torch-ext, src. A command that writes the JSON file it names under {out} gets that file merged into the results.

--dry runs every step on this CPU: no wheels, the CPU variant instead of the CUDA build, the CPU kernels_ci tests,
tiny benchmark shapes.

Usage: python scripts/gpu_check.py [--deadline-s 450] [--out DIR] [--e2e-cmd CMD] [--extra-cmd CMD]... [--dry]
"""
import argparse
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_findings import first_culprit, fastest_settings, pytest_summary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "triattention-community/triattention"
SITE = Path("/tmp/site")
DEFAULT_E2E = "{python} benchmarks/bench_e2e.py --device {device} --json {out}/bench_e2e.json"
# Launch shapes the bench step compares with the built-in ones (TRIATTENTION_CUDA_TUNE, tuning.h): seconds of GPU.
# "score_stages=1" and "compact_stages=1,compact_pipeline=0" are the register paths: the built-in ones today, the
# baseline to compare with once a staged setting is adopted (tuning.h kBuiltin*).
BENCH_TUNE = ["score_waves=2", "score_waves=4", "score_stages=1", "score_stages=3", "score_stages=4", "score_stages=6",
              "score_stages=3,score_waves=2", "score_stages=4,score_waves=2",
              "compact_slice=32", "compact_slice=128", "compact_slice=256", "compact_pipeline=1",
              "compact_slice=128,compact_pipeline=1", "compact_stages=3", "compact_slice=128,compact_stages=3",
              "compact_slice=256,compact_stages=3", "compact_slice=256,compact_stages=6",
              "compact_stages=1,compact_pipeline=0", "compact_chunk=8192", "compact_chunk=16384",
              "compact_chunk=32768", "compact_chunk=65536"]
# The code paths no built-in launch takes (staged score_keys; pipelined, staged and chunked compact_), through the
# contract tests: one pytest run per setting.
TUNED_TESTS = ["score_stages=4,compact_slice=128,compact_pipeline=1",
               "score_stages=3,compact_slice=256,compact_stages=3,compact_chunk=32768", "compact_chunk=4096"]


class Check:
    def __init__(self, args):
        self.args = args
        self.t0 = time.time()
        self.deadline = self.t0 + args.deadline_s
        self.out = args.out.resolve()
        self.logs = (args.logs or self.out / "logs").resolve()  # outside $OUT on a device: 8 files come back
        self.logs.mkdir(parents=True, exist_ok=True)
        self.device = "cpu" if args.dry else "cuda"
        self.variant = None
        self.results = {"dry": args.dry, "argv": sys.argv[1:], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "deadline_s": args.deadline_s, "steps": {}}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._prepend_path(str(ROOT / "src"))
        self._prepend_path(str(ROOT / "torch-ext"))

    def _prepend_path(self, path: str) -> None:
        old = self.env.get("PYTHONPATH", "")
        self.env["PYTHONPATH"] = path + (os.pathsep + old if old else "")

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.time() - self.t0, 1)
        tmp = self.out / "gpu_results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        tmp.replace(self.out / "gpu_results.json")

    def step(self, name: str, fn, need_s: float = 5) -> None:
        """Run ``fn`` and record ``{ok, s, result | error}``; skipped when less than ``need_s`` is left."""
        if self.left() < need_s:
            self.results["steps"][name] = {"ok": False, "skipped": f"{self.left():.0f} s left, needs {need_s:.0f}"}
            self.save()
            print(f"=== {name}: skipped ({self.left():.0f} s left)", flush=True)
            return
        print(f"=== {name} (t={time.time() - self.t0:.0f} s, {self.left():.0f} s left)", flush=True)
        t = time.time()
        try:
            entry = {"ok": True, "result": fn()}
        except Exception as err:  # one failure must not lose the other steps
            entry = {"ok": False, "error": f"{type(err).__name__}: {err}"[-3000:], "tb": traceback.format_exc()[-3000:]}
        entry["s"] = round(time.time() - t, 1)
        self.results["steps"][name] = entry
        self.save()
        print(json.dumps(entry, default=str)[:2000], flush=True)

    def run(self, name: str, cmd, limit_s: float, env=None, check: bool = True) -> dict:
        """Run ``cmd`` (list or shell string) with a time limit; its whole process group is killed on timeout.
        ``check``: raise on a non-zero status or a timeout; otherwise the caller reads ``rc`` and ``timed_out``
        (``crashed``: killed by a signal it did not get from this time limit)."""
        limit = max(1.0, min(limit_s, self.left() - 2))
        log = self.log(name)
        shell = isinstance(cmd, str)
        t = time.time()
        with open(log, "w") as f:
            f.write(f"$ {cmd if shell else shlex.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, shell=shell, cwd=ROOT, env=env or self.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
                timed_out = False
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended just now
                    pass
                rc = proc.wait()
                timed_out = True
        text = log.read_text(errors="replace")
        res = {"rc": rc, "timed_out": timed_out, "crashed": rc < 0 and not timed_out, "limit_s": round(limit),
               "s": round(time.time() - t, 1), "log": str(log), "tail": text[-2500:]}
        res["error"] = f"{name}: rc={rc} timed_out={timed_out} after {res['s']} s\n{text[-1500:]}"
        if check and (rc != 0 or timed_out):
            raise RuntimeError(res["error"])
        return res

    def expand(self, cmd: str) -> str:
        """Only these placeholders are replaced, so commands may hold other braces (python -c "{...}")."""
        variant = str(self.variant or "")
        values = {"python": sys.executable, "out": str(self.out), "device": self.device, "variant": variant,
                  "build": str(Path(variant).parent) if variant else ""}
        for key, value in values.items():
            cmd = cmd.replace("{" + key + "}", shlex.quote(value) if value else "")
        return cmd

    # ----------------------------------------------------------------------------------------------- steps
    def env_info(self) -> dict:
        import torch

        info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                "cuda_available": torch.cuda.is_available(), "cwd": str(ROOT)}
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            try:
                smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,driver_version",
                                      "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
                info["nvidia_smi"] = smi.stdout.strip()
            except (OSError, subprocess.TimeoutExpired) as err:
                info["nvidia_smi"] = f"{type(err).__name__}: {err}"
        try:
            nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
            info["nvcc"] = nvcc.splitlines()[-1] if nvcc else None
        except (OSError, subprocess.TimeoutExpired):
            info["nvcc"] = None
        if not self.args.dry and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible (use --dry on a CPU machine)")
        return info

    def wheels(self) -> dict:
        wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
        if self.args.dry:
            return "dry run: the local environment is used"
        if wheels:
            self.run("wheels", [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                "--target", str(SITE), "--upgrade", *wheels], 120)
            self._prepend_path(str(SITE))
            sys.path.insert(0, str(SITE))
        # The tests and the benchmark load the variant through `kernels`, which the GPU image lacks: say so here
        # (the step fails, the build still runs) rather than in every test.
        probe = subprocess.run([sys.executable, "-c", "import kernels; print(kernels.__version__)"],
                               env=self.env, capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            raise RuntimeError("`import kernels` fails" + ("" if wheels else " and there is no .whl/ folder "
                               "(scripts/fetch_gpu_wheels.sh, carried as .whl)") + ": " + probe.stderr[-800:])
        tf = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                            env=self.env, capture_output=True, text=True, timeout=120)
        return {"installed": [Path(w).name for w in wheels], "kernels": probe.stdout.strip(),
                "transformers": tf.stdout.strip() or tf.stderr[-500:]}

    def build(self) -> dict:
        if self.args.dry:
            cmd = [sys.executable, "scripts/build_cpu_variant.py"]
        else:
            cmd = [sys.executable, "scripts/build_cuda_variant.py", "--content-id"]
            cmd += ["--archs", *self.args.archs] if self.args.archs else []
        res = self.run("build", cmd, self.args.build_timeout_s)
        # The build scripts print the variant dir (then a duration) on their last line.
        last = res["tail"].strip().splitlines()[-1]
        self.variant = Path(re.sub(r" \(\d+ s\)$", "", last).strip())
        if not (self.variant / "metadata.json").exists():
            raise RuntimeError(f"no variant at {self.variant}")
        self.env["LOCAL_KERNELS"] = f"{REPO_ID}={self.variant.parent}"
        self.env["TRIATTENTION_VARIANT_DIR"] = str(self.variant)
        if self.args.dry:  # the CUDA fixture must not pick up a CPU variant
            self.env.pop("TRIATTENTION_VARIANT_DIR")
        return {"variant": str(self.variant), "metadata": json.loads((self.variant / "metadata.json").read_text()),
                "s": res["s"]}

    def contract_tests(self) -> list:
        """pytest's selection of the contract tests this run checks: the CUDA ones (the CPU kernels_ci ones --dry)."""
        return ["-k", "cpu", "-m", "kernels_ci"] if self.args.dry else ["-k", "cuda"]

    def tests(self) -> dict:
        """The CUDA contract tests. A test that kills the process (a crash in native code) is recorded with the
        native stack pytest's faulthandler prints, deselected, and the rest run again (up to 4 crashes)."""
        select = self.contract_tests()
        crashed, started, summary = [], time.time(), {}
        for attempt in range(5):
            cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rs", "--tb=short",
                   "tests/test_compiled_ops.py", *select, *[a for c in crashed for a in ("--deselect", c["test"])]]
            res = self.run("tests", cmd, self.args.tests_timeout_s - (time.time() - started), check=False)
            text = self.log("tests").read_text(errors="replace")
            if res["rc"] == 0 and not res["timed_out"]:
                summary = pytest_summary(res["tail"] + "\n" + text)
                break
            running = re.findall(r"^(tests/test_compiled_ops\.py::\S+)", text, flags=re.M)
            finished = set(re.findall(r"^(tests/test_compiled_ops\.py::\S+) (?:PASSED|FAILED|SKIPPED|ERROR)",
                                      text, flags=re.M))
            victim = next((t for t in reversed(running) if t not in finished), None)
            if not res["crashed"] or victim is None or attempt == 4:  # a plain failure, or the time limit
                summary = pytest_summary(text)
                summary["crashed"] = crashed
                self.results["tests_summary"] = summary
                raise RuntimeError(f"{res['error']}\n{text[-6000:]}")
            crashed.append({"test": victim, "stack": text[-4000:]})
        summary["crashed"] = crashed
        self.results["tests_summary"] = summary
        if crashed:
            raise RuntimeError(f"{len(crashed)} test(s) crashed the process: {[c['test'] for c in crashed]}")
        return {"summary": summary, "s": round(time.time() - started, 1)}

    def tuned(self) -> dict:
        """The score_keys and compact_ contract tests on the code paths only TRIATTENTION_CUDA_TUNE reaches, so a
        setting the bench step finds faster is also known to meet the contract (bad-input tests: see `tests`)."""
        dev = "cpu" if self.args.dry else "cuda"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short",
               "tests/test_compiled_ops.py", "-k", f"{dev} and (score_keys or compact) and not rejects"]
        cmd += ["-m", "kernels_ci"] if self.args.dry else []
        runs, started = {}, time.time()
        for i, tune in enumerate(TUNED_TESTS):
            limit = self.args.tests_timeout_s - (time.time() - started)
            res = self.run(f"tuned{i + 1}", cmd, limit, env=dict(self.env, TRIATTENTION_CUDA_TUNE=tune))
            runs[tune] = pytest_summary(res["tail"])
        return {"runs": runs, "s": round(time.time() - started, 1)}

    def history(self) -> dict:
        """When a contract test crashed in `tests` but the probe's fresh processes raised as they should: which
        earlier test of that process makes it crash (gpu_findings.first_culprit; one pytest process per trial)."""
        crashed = self.results.get("tests_summary", {}).get("crashed") or []
        cases = self.results.get("throw_probe", {}).get("cases", {})
        if not crashed:
            return {"skipped": "no test crashed"}
        fresh = ("kernel_cpu",) if self.args.dry else ("kernel_cuda", "kernel_cuda_compact")
        if not all(cases.get(c, {}).get("ok") for c in fresh):
            return {"skipped": "the probe's fresh processes crash too: the crash does not need an earlier test"}
        select = self.contract_tests()
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_compiled_ops.py"]
        listed = self.run("history-collect", base + ["--collect-only"] + select, 60)["tail"]
        order = re.findall(r"^(tests/test_compiled_ops\.py::\S+)$", self.log("history-collect").read_text(), re.M)
        victim = crashed[0]["test"]
        if victim not in order:
            raise RuntimeError(f"{victim} is not among the collected tests:\n{listed[-1500:]}")
        started, count = time.time(), [0]

        def crashes(ids: list) -> bool:
            count[0] += 1
            res = self.run(f"history{count[0]}", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                                  *ids], 60, check=False)
            if res["timed_out"]:  # neither answer: stop the search
                raise RuntimeError(res["error"])
            return res["crashed"]  # otherwise a test failed or all passed, and the process lived
        return {**first_culprit(crashes, order[:order.index(victim)], victim), "s": round(time.time() - started, 1)}

    def run_json(self, name: str, cmd: list, limit_s: float, key: str) -> dict:
        """``run`` a script that writes ``$OUT/<key>.json`` (its ``--json``); the file, even a partial one left by a
        timeout or a failure, goes into the results under ``key``."""
        path = self.out / f"{key}.json"
        try:
            self.run(name, cmd + ["--json", str(path)], limit_s)
        finally:
            if path.exists():
                self.results[key] = json.loads(path.read_text())
        return {"json": str(path)}

    def probe(self) -> dict:
        cmd = [sys.executable, "scripts/throw_probe.py"] + (["--dry"] if self.args.dry else [])
        return self.run_json("probe", cmd, self.args.probe_timeout_s, "throw_probe")

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def bench(self) -> dict:
        cmd = [sys.executable, "benchmarks/bench_kernels.py", "--device", self.device]
        cmd += [a for t in BENCH_TUNE for a in ("--tune", t)] + (["--quick"] if self.args.dry else [])
        res = self.run_json("bench", cmd, self.args.bench_timeout_s, "bench_kernels")
        return {**res, "fastest": fastest_settings(self.results.get("bench_kernels", {}).get("tuning", []))}

    def command(self, name: str, cmd: str, limit_s: float) -> dict:
        expanded = self.expand(cmd)
        tokens = [t.split("=", 1)[-1] for t in shlex.split(expanded)]
        named = [Path(t) for t in tokens if t.endswith(".json") and t.startswith(str(self.out))]
        try:
            res = self.run(name, expanded, limit_s)
        finally:
            for p in named:
                if p.exists():
                    try:
                        self.results.setdefault("command_json", {})[f"{name}:{p.name}"] = json.loads(p.read_text())
                    except ValueError:
                        pass
        return {"cmd": expanded, "s": res["s"], "tail": res["tail"][-1500:]}

    def main(self) -> int:
        self.step("env", self.env_info, need_s=1)
        self.step("wheels", self.wheels, need_s=20)
        self.step("build", self.build, need_s=30)
        if self.variant is None:
            self.results["steps"]["tests"] = {"ok": False, "skipped": "no variant built"}
            self.results["steps"]["bench"] = {"ok": False, "skipped": "no variant built"}
        else:
            self.step("probe", self.probe, need_s=30)
            self.step("tests", self.tests, need_s=30)
            self.step("tuned", self.tuned, need_s=30)
            self.step("bench", self.bench, need_s=30)
            self.step("history", self.history, need_s=60)
        e2e = self.args.e2e_cmd
        if e2e is None and not (ROOT / "benchmarks" / "bench_e2e.py").exists():
            self.results["steps"]["e2e"] = {"ok": True, "skipped": "benchmarks/bench_e2e.py does not exist"}
            self.save()
        elif e2e != "":
            self.step("e2e", lambda: self.command("e2e", e2e or DEFAULT_E2E, self.args.e2e_timeout_s), need_s=20)
        for i, cmd in enumerate(self.args.extra_cmd):
            self.step(f"extra{i + 1}", lambda cmd=cmd, i=i: self.command(f"extra{i + 1}", cmd,
                                                                            self.args.extra_timeout_s), need_s=10)
        self.results["ok"] = all(s.get("ok") for s in self.results["steps"].values())
        self.save()
        brief = {k: ("ok" if v.get("ok") else v.get("skipped") or "FAILED") for k, v in self.results["steps"].items()}
        print(f"\nDONE in {time.time() - self.t0:.0f} s: {json.dumps(brief)}\nresults: {self.out / 'gpu_results.json'}",
              flush=True)
        return 0 if self.results["ok"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="run every step on this CPU (CPU variant, tiny shapes)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "gpu_out"),
                        help="results folder (default: $OUT, else gpu_out/)")
    parser.add_argument("--deadline-s", type=float, default=450, help="overall time budget (default 450)")
    parser.add_argument("--logs", type=Path, default=None, help="folder of the steps' logs (default OUT/logs)")
    parser.add_argument("--archs", nargs="+", default=None, help="CUDA archs to build (default: the local GPU's)")
    parser.add_argument("--build-timeout-s", type=float, default=240)
    parser.add_argument("--probe-timeout-s", type=float, default=150)
    parser.add_argument("--tests-timeout-s", type=float, default=150)
    parser.add_argument("--bench-timeout-s", type=float, default=150)
    parser.add_argument("--e2e-cmd", default=None,
                        help=f"end-to-end command ('' to skip; default, when the file exists: {DEFAULT_E2E})")
    parser.add_argument("--e2e-timeout-s", type=float, default=240)
    parser.add_argument("--extra-cmd", action="append", default=[], help="another command to run (repeatable)")
    parser.add_argument("--extra-timeout-s", type=float, default=120, help="time limit of each --extra-cmd")
    return Check(parser.parse_args()).main()


if __name__ == "__main__":
    sys.exit(main())
