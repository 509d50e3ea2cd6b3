"""The cost model on paper: shapes and storage agree with the library's own modules, PTQ time splits over GPUs as
``lords.distribute`` splits the work, and the calibrated constants give back the measurement they came from."""

from __future__ import annotations

import pytest

import lords
from benchmarks.scale import cost_model as cm
from lords_pipelines.models import tiny_llama

TINY = cm.Shape("tiny", hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256, vocab=512)


def test_shapes_count_llama3_8b_and_70b_parameters():
    assert round(cm.LLAMA3_8B.params / 1e9, 2) == 8.03 and round(cm.LLAMA3_70B.params / 1e9, 2) == 70.55


def test_shape_counts_the_tiny_llamas_parameters():
    assert TINY.params == sum(p.numel() for p in tiny_llama(seed=0).parameters())


def test_storage_matches_the_bits_per_weight_of_a_quantized_model():
    model = tiny_llama(seed=0)
    lords.quantize_(model, lords.LordsConfig(bits=3, block_size=16), progress=False)
    assert cm.storage(TINY, bits=3, block=16)["bits_per_weight"] == pytest.approx(
        lords.storage_bits(model)["bits_per_weight"], rel=1e-12
    )


def test_lords_at_parity_rank_costs_no_more_than_its_block_budget():
    for bits in (2, 3, 4):
        for block in (64, 128, 256):
            assert cm.storage(cm.LLAMA3_8B, bits, block)["bits_per_weight"] <= bits + 32 / block


def test_calibrated_time_gives_back_the_block_it_came_from():
    per = cm.seconds_per_weight_step(9.7, 500, cm.LLAMA3_8B)
    assert cm.ptq_seconds(cm.LLAMA3_8B, 500, per, fixed_seconds=0.0)["block_seconds"] == pytest.approx(9.7)


def test_float_inputs_split_whole_blocks_and_quantized_inputs_split_each_blocks_linears():
    assert cm.split_fraction(cm.LLAMA3_8B, 2, "float") == 0.5
    assert cm.split_fraction(cm.LLAMA3_8B, 3, "float") == 11 / 32
    # Llama-3-8B's block on 2 ranks: gate + up against down + attention.
    assert cm.split_fraction(cm.LLAMA3_8B, 2, "quantized") == pytest.approx(2 * 14336 * 4096 / 218_103_808)


def test_gpu_hours_grow_by_the_fixed_part_each_extra_gpu_pays():
    per = cm.seconds_per_weight_step(9.7, 500, cm.LLAMA3_8B)
    one, two = (cm.ptq_seconds(cm.LLAMA3_8B, 500, per, 90.0, ranks=n) for n in (1, 2))
    assert two["gpu_hours"] - one["gpu_hours"] == pytest.approx(90.0 / 3600)


def test_utilisation_calibrated_on_a_speed_predicts_that_speed():
    u = cm.mfu(11_786.5, cm.DDP_1B, 512, 989e12)
    assert cm.qat_tokens_per_s(cm.DDP_1B, 512, 989e12, u) == pytest.approx(11_786.5)


def test_fsdp_shards_qat_state_but_not_what_backward_keeps():
    one, eight = (cm.qat_memory_per_gpu(cm.LLAMA3_8B, g, 4096, checkpoint_blocks=False) for g in (1, 8))
    assert eight["state_gib"] == pytest.approx(one["state_gib"] / 8) and eight["saved_gib"] == one["saved_gib"]


def test_fsdp_leaves_peft_codes_whole_on_every_gpu():
    one, eight = (cm.peft_memory_per_gpu(cm.LLAMA3_70B, 3, g, 4096, checkpoint_blocks=True) for g in (1, 8))
    assert eight["codes_gib"] == one["codes_gib"] and eight["state_gib"] < one["state_gib"]
