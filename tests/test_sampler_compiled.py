"""The sampler on the compiled kernel loaded through get_kernel(LOCAL_KERNELS) equals the reference path."""
import logging

import torch

import triattention_sampler as ts
from conftest import tiny_model
from kernel_fixtures import REPO_ID, cpu_variant  # noqa: F401


def test_load_ops_picks_the_local_kernel_and_matches_reference_tokens(cpu_variant, monkeypatch, caplog):
    from triattention_sampler import kernel_loading

    monkeypatch.setattr(kernel_loading, "_LOADED", {})
    monkeypatch.setenv("LOCAL_KERNELS", f"{REPO_ID}={cpu_variant.parent}")
    monkeypatch.delenv("TRIATTENTION_KERNEL_REPO", raising=False)
    with caplog.at_level(logging.INFO):
        compiled = kernel_loading.load_ops()
    assert "hub kernel triattention-community/triattention" in caplog.text
    assert compiled.backend_name() == "compiled"
    import triattention as reference

    model = tiny_model("llama")
    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    outs = []
    for ops in (reference, compiled):
        cache = ts.TriAttentionCache(model, budget=16, interval=4, ops=ops)
        with ts.use_triattention_attention(model):
            outs.append(model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache,
                                       max_new_tokens=60, min_new_tokens=60, do_sample=False))
        assert cache.rounds > 0
    assert torch.equal(outs[0], outs[1])
