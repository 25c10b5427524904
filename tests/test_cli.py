"""CLI: --help everywhere and the error paths (exit 2, one line, no traceback); no real model loaded (a tiny random
model saved to a folder stands in where a command must run)."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from triattention_sampler.cli import build_parser, main

from conftest import tiny_model

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


# -- usage errors are caught before any model loads ---------------------------------------------------------------
NO_MODEL = "/no/such/model"  # were a check to run after loading, the error would name this folder instead


@pytest.fixture
def random_file(tmp_path):
    path = tmp_path / "random.bin"
    path.write_bytes(os.urandom(4096))
    return str(path)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("a short text to calibrate on. " * 20)
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["eval", "--budgets", "128,abc"], "--budgets must be comma-separated integers, got '128,abc'"),
    (["generate", "hi", "--threads", "-1"], "--threads must be >= 0, got -1"),
    (["eval", "--threads", "-1"], "--threads must be >= 0, got -1"),
    (["generate", "hi", "--calibration", "{random}"], "{random} is not a readable safetensors file"),
    (["eval", "--methods", "triattention", "--calibration", "{random}"], "{random} is not a readable safetensors"),
    (["bench", "--calibration", "{random}", "--out", "{tmp}"], "{random} is not a readable safetensors file"),
    (["generate", "hi", "--set", "pin_prompt=maybe"], "pin_prompt must be True or False, got str 'maybe'"),
    (["generate", "hi", "--set", "budgett=100"], "--set 'budgett=100': expected key=value with key one of"),
    (["generate", "hi", "--sample", "--temperature", "0"], "--temperature must be > 0, got 0.0"),
    (["generate", "hi", "--sample", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["calibrate", "--text", "{text}", "-o", "/proc/x.safetensors"], "output folder /proc is not writable"),
    (["calibrate", "--text", "{text}", "-o", "/proc/triattention/x.safetensors"], "cannot create output folder"),
    (["bench", "--out", "/proc/triattention-results"], "cannot create --out folder"),
])
def test_usage_errors_exit_2_with_one_line_before_the_model_loads(capsys, tmp_path, random_file, text_file, argv,
                                                                  message):
    fill = dict(random=random_file, text=text_file, tmp=str(tmp_path))
    argv = [a.format(**fill) for a in argv] + ["--model", NO_MODEL]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(**fill) in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert NO_MODEL not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a device this machine lacks")
@pytest.mark.parametrize("command", [["generate", "hi"], ["eval"], ["bench"], ["calibrate"]])
def test_cuda_without_cuda_is_refused_first(capsys, command):
    assert main([*command, "--device", "cuda", "--model", NO_MODEL]) == 2
    err = capsys.readouterr().err.strip()
    assert "CUDA is not available here" in err and "--device cpu" in err and len(err.splitlines()) == 1


def test_bad_calibration_file_in_a_subprocess_has_no_traceback(random_file):
    out = subprocess.run([sys.executable, "-m", "triattention_sampler.cli", "generate", "hi", "--calibration",
                          random_file], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and random_file in out.stderr


# -- commands that run: a tiny random model saved with a word-level tokenizer ----------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(120)] + ["hello", "world", "tell", "story"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model = tiny_model("llama", attn="sdpa", eos_token_id=None)  # no EOS: every run makes all its tokens
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def summary_numbers(err):
    budget = int(re.search(r"budget (\d+) interval", err).group(1))
    rounds = int(re.search(r"(\d+) rounds", err).group(1))
    return budget, rounds


@pytest.mark.parametrize("flags, budget", [(["--set", "budget=100"], 100), (["--budget", "50", "--set", "budget=100"],
                                                                             100), (["--budget", "50"], 50)])
def test_generate_set_budget_wins_over_the_flag(capsys, tiny_model_dir, flags, budget):
    argv = ["generate", "hello world", "--model", tiny_model_dir, "--no-chat", "--max-new-tokens", "8", *flags]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert summary_numbers(captured.err) == (budget, 0)
    assert len(captured.out.split()) >= 6  # the streamed text: one word per token (special tokens are skipped)


def test_generate_streams_and_compresses_with_the_cache_line_last(capsys, tiny_model_dir):
    argv = ["generate", "tell story", "--model", tiny_model_dir, "--no-chat", "--max-new-tokens", "40", "--budget",
            "8", "--interval", "4", "--method", "triattention-online", "--sample", "--temperature", "0.8",
            "--repetition-penalty", "1.2", "--threads", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert len(captured.out.split()) >= 30  # one word per token, special tokens skipped
    assert summary_numbers(captured.err)[1] >= 5  # rounds ran: 2 + 40 tokens under budget 8 + interval 4
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("--- cache: logical 41 tokens, physical") and "40 new tokens" in lines[-2]


def test_calibration_of_another_model_is_one_line_after_loading(capsys, tiny_model_dir, tmp_path):
    """A mismatch only the loaded model can reveal (here in bench, whose cache is built after loading)."""
    import triattention_sampler as ts

    path = str(tmp_path / "other.safetensors")
    other = tiny_model("llama", rope_theta=50000.0)
    info = ts.describe_model(other)
    shape = (info.num_layers, info.num_heads, info.rope.freq_count)
    ts.CalibrationStats(torch.zeros(shape), torch.zeros(shape), torch.ones(shape), torch.zeros(2, 4, 0),
                        ts.calibration.model_metadata(info)).save(path)
    argv = ["bench", "--model", tiny_model_dir, "--method", "triattention", "--budgets", "16", "--interval", "4",
            "--max-new-tokens", "4", "--calibration", path, "--no-full", "--no-plot", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()  # after transformers' weight-loading bar: the error, on one line
    last = err.splitlines()[-1]
    assert last.startswith("triattention bench: error: ") and "Traceback" not in err
    assert "rope_theta=50000.0" in last and "calibrate this model" in last
