"""CLI: --help everywhere and the error paths (exit 2, one line, no traceback); no real model loaded."""
import json
import subprocess
import sys

import pytest

from triattention_sampler.cli import build_parser, main

COMMANDS = ["calibrate", "generate", "eval", "bench", "plot"]


def test_help_everywhere(capsys):
    for argv in ([], *([c] for c in COMMANDS)):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "usage: triattention" in out
    assert set(COMMANDS) <= set(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("argv, message", [
    (["generate", "hi", "--method", "nope"], "unknown method 'nope'"),
    (["generate", "hi", "--budget", "4", "--sink-tokens", "4"], "must exceed the protected tokens"),
    (["generate", "hi", "--budget", "0"], "--budget must be >= 1"),
    (["generate", "--prompt-file", "/no/such/prompt.txt"], "prompt file not found"),
    (["generate", "hi", "--calibration", "/no/such.safetensors"], "calibration file not found"),
    (["eval", "--methods", "triattention,bogus"], "unknown method 'bogus'"),
    (["eval", "--budgets", "100"], "must divide every budget"),
    (["eval", "--text", "milton"], "is the calibration corpus"),
    (["bench", "--budgets", "8", "--interval", "4", "--method", "streamingllm", "--calibration", "/x"],
     "calibration file not found"),
    (["calibrate", "--text", "/no/such/file.txt"], "text file not found"),
    (["plot", "/no/such/results.json"], "results file not found"),
])
def test_error_paths_exit_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_subcommand_and_bad_type_exit_2(capsys):
    for argv in (["frobnicate"], ["generate", "hi", "--budget", "many"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_plot_rejects_non_result_json(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"hello": 1}))
    assert main(["plot", str(path)]) == 2
    assert "cannot plot" in capsys.readouterr().err


def test_plot_writes_pngs(tmp_path):
    quality = {"kind": "quality", "model": "m", "text": "t", "tokens": 10, "eval_start": 0, "rows": [
        {"method": m, "budget": b, "kl": 0.1 / b, "top1": 0.9, "nll": 3.0, "nll_ref": 2.9}
        for m in ("triattention", "streamingllm") for b in (128, 256)]}
    bench = {"kind": "bench", "model": "m", "runs": [{"label": "full", "rows": [
        {"logical_length": n, "kv_bytes_used": n * 10, "tokens_per_s": 20.0} for n in (512, 1024)]}]}
    for name, obj in (("q.json", quality), ("b.json", bench)):
        (tmp_path / name).write_text(json.dumps(obj))
    assert main(["plot", str(tmp_path / "q.json"), str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "quality_vs_budget.png").stat().st_size > 1000
    assert (tmp_path / "bench_vs_length.png").stat().st_size > 1000


def test_console_script_subprocess():
    out = subprocess.run([sys.executable, "-m", "triattention_sampler.cli", "generate", "x", "--method", "zzz"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().startswith("triattention generate: error: unknown method")
