"""Stacked Algorithm 1 (all layers of one shape at once, the GPU path) is the per-layer Algorithm 1."""

import copy

import pytest
import torch

from lords import BlockwiseConfig, LordsConfig, RefineConfig, quantize_
from lords_pipelines.models import tiny_llama


@pytest.mark.parametrize(
    "config",
    [
        LordsConfig(bits=3, block_size=32, refine=RefineConfig(steps=20, lr=0.01, objective="weight")),
        LordsConfig(bits=2, block_size=32, rank_scale=4, refine=RefineConfig(steps=20, lr=0.01, objective="act_diag")),
        BlockwiseConfig(bits=3, block_size=32, refine=RefineConfig(steps=20, lr=0.01, objective="act_diag")),
    ],
    ids=["lords-weight", "lords-act_diag-rank4x", "blockwise-act_diag"],
)
def test_stacked_refinement_gives_the_per_layer_curves_and_layers(config, tokens):
    model = tiny_llama(seed=0)
    one, many = copy.deepcopy(model), copy.deepcopy(model)
    r1 = quantize_(one, config, calib_ids=tokens, progress=False, batch_refine=False)
    r2 = quantize_(many, config, calib_ids=tokens, progress=False, batch_refine=True)
    assert [lay.name for lay in r1.layers] == [lay.name for lay in r2.layers]
    for a, b in zip(r1.layers, r2.layers):
        assert len(a.losses) == len(b.losses) == 21
        assert a.losses == pytest.approx(b.losses, rel=1e-4)
    assert r2.rel_error == pytest.approx(r1.rel_error, rel=1e-4)
    with torch.no_grad():
        assert torch.allclose(one(tokens).logits, many(tokens).logits, rtol=1e-3, atol=1e-3)
