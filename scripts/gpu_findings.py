"""What gpu_check makes of its runs, kept apart so it is tested without a GPU (tests/test_gpu_tools.py): the
launch setting to adopt from a --tune sweep, a pytest summary, and the earlier test that makes a later one crash."""
import json
import re


def fastest_settings(rows: list) -> dict:
    """From the --tune sweep: per (op, shape) the fastest setting whose output equals the built-in one's; and per op
    the setting to adopt as built-in (tuning.h kBuiltin*; compact_slice: the rule in compact.cu): identical output
    on every shape, not slower than the built-in launch on any, the best geometric-mean speedup (none below 1.03x)."""
    cases = {}
    for r in rows:
        shape = {k: v for k, v in r.items() if k not in ("tune", "ms", "GBps", "pct_hbm", "same")}
        cases.setdefault(json.dumps(shape), []).append(r)
    per_shape, speedups = [], {}  # speedups[(op, tune)] = [built-in ms / ms per shape], None when output differs
    for shape, rs in cases.items():
        builtin = next((r for r in rs if r["tune"] == "built-in"), None)
        if builtin is None:
            continue
        for r in rs:
            speedups.setdefault((builtin["op"], r["tune"]), []).append(
                builtin["ms"] / r["ms"] if r.get("same", True) else None)
        best = min((r for r in rs if r.get("same", True)), key=lambda r: r["ms"])
        per_shape.append({**json.loads(shape), "tune": best["tune"], "ms": best["ms"], "pct_hbm": best.get("pct_hbm"),
                          "vs_builtin": round(builtin["ms"] / best["ms"], 3),
                          "differs": [r["tune"] for r in rs if not r.get("same", True)]})
    adopt = {}
    for (op, tune), xs in speedups.items():
        if tune == "built-in" or None in xs or min(xs) < 0.98:  # 2 %: the run-to-run spread of the medians
            continue
        geomean = 1.0
        for x in xs:
            geomean *= x ** (1 / len(xs))
        if geomean >= 1.03 and geomean > adopt.get(op, {}).get("geomean_speedup", 0):  # a gain beyond the noise
            adopt[op] = {"tune": tune, "geomean_speedup": round(geomean, 3), "min_speedup": round(min(xs), 3)}
    return {"per_shape": per_shape, "adopt": adopt}


def pytest_summary(text: str) -> dict:
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", text)}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    return {"counts": counts, "failed": failed[:50]}


def first_culprit(crashes, before: list, victim: str) -> dict:
    """The test among ``before`` (the tests that ran ahead of ``victim`` in the process where it crashed) whose
    running first makes ``victim`` crash. ``crashes(ids)`` runs the tests ``ids`` in order in one fresh process and
    says whether it died. The victim alone first; then a binary search for the shortest prefix of ``before`` that,
    followed by the victim, crashes (all of ``before`` did); its last test, run alone before the victim, confirms."""
    trials = []

    def trial(ids: list) -> bool:
        crashed = crashes(ids + [victim])
        trials.append({"tests_before": len(ids), "last": ids[-1] if ids else None, "crashed": crashed})
        return crashed

    if trial([]):
        return {"victim": victim, "alone": "crashes", "culprit": None, "trials": trials}
    lo, hi = 0, len(before)  # before[:lo] + victim passes, before[:hi] + victim crashed
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(before[:mid]):
            hi = mid
        else:
            lo = mid
    culprit = before[hi - 1] if before else None
    confirmed = trial([culprit]) if culprit else False
    return {"victim": victim, "alone": "passes", "culprit": culprit, "confirmed_alone": confirmed, "trials": trials}
