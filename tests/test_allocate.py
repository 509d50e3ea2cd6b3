"""Sensitivity bit allocation: at the same average bits as LoftQ's rule it picks as many high-bit layers, the ones
whose low-bit error (weighted by their inputs) costs the most, and quantize_ applies and records it."""

from __future__ import annotations

import pytest
import torch

import lords
from lords.allocate import allocate_bits, layer_gains
from lords.calibration import collect_stats
from lords_pipelines.models import tiny_llama

BASE = lords.BlockwiseConfig(block_size=16, calib_tokens=128)


@pytest.fixture
def model_and_ids():
    model = tiny_llama(seed=0, layers=4)
    with torch.no_grad():  # make layer 2 the sensitive one: large weights in its MLP
        model.model.layers[2].mlp.down_proj.weight.mul_(8)
    return model, torch.randint(0, 512, (1, 128), generator=torch.Generator().manual_seed(0))


def test_allocation_spends_the_same_bits_as_loftq_on_the_most_sensitive_layers(model_and_ids):
    model, ids = model_and_ids
    linears = {n: m for n, (m, _) in lords.plan(model, BASE).items()}
    stats = collect_stats(model, ids, linears, 0)
    gains = layer_gains(model, BASE, stats)
    config = allocate_bits(model, BASE, 2.5, stats)
    high = [i for i in range(4) if config.config_for(f"model.layers.{i}.mlp.up_proj", i, 4).bits == 4]
    assert len(high) == lords.MixedPrecisionConfig(base=BASE, bits=2.5).high_layers(4) == 1
    assert high == [max(gains, key=lambda i: gains[i][0])] == [2]


def test_quantize_resolves_the_sensitivity_rule_and_records_it(model_and_ids, tmp_path):
    model, ids = model_and_ids
    report = lords.quantize_(
        model, lords.MixedPrecisionConfig(base=BASE, bits=2.5, rule="sensitivity"), calib_ids=ids, progress=False
    )
    assert type(report.config) is lords.LayerwiseConfig and model.lords_config is report.config
    assert [model.model.layers[i].mlp.up_proj.bits for i in range(4)] == [2, 2, 4, 2]
    lords.save_quantized(model, tmp_path / "q", report.config)
    _, config = lords.load_quantized(tmp_path / "q", tiny_llama(seed=0, layers=4))
    assert config == report.config


def test_the_sensitivity_rule_needs_calibration_tokens(model_and_ids):
    model, _ = model_and_ids
    with pytest.raises(lords.LordsError, match="calib_ids"):
        lords.quantize_(model, lords.MixedPrecisionConfig(base=BASE, bits=2.5, rule="sensitivity"), progress=False)


def test_sensitivity_rule_spends_exactly_what_loftqs_rounded_rule_spends():
    """2.5 bits over 6 layers: LoftQ's rule rounds 1.5 to 2 layers at 4 bits; the sensitivity rule takes 2 too
    (at most 2.5 bits it could afford only 1)."""
    from lords import BlockwiseConfig, MixedPrecisionConfig
    from lords_pipelines.models import tiny_llama

    model = tiny_llama(seed=0, layers=6)
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(0))
    config = MixedPrecisionConfig(BlockwiseConfig(bits=2, block_size=32, calib_tokens=64), bits=2.5, rule="sensitivity")
    resolved = config.resolve(model, ids)
    assert config.high_layers(6) == 2
    assert len(resolved.rules) == 2
