"""The PTQ tables' statistics: collapsed perplexities on the log scale, zero-shot differences by a paired test."""

import math

import pytest
import torch

from lords_pipelines.tables.aggregate import aggregate
from lords_pipelines.tables.stats import item_scores, paired_bootstrap


def _record(method, sample, ppl, correct, bits=3):
    return {
        "model": "m",
        "method": method,
        "bits": bits,
        "block_size": 64,
        "rule": None,
        "steps": 0,
        "rank_scale": 1.0,
        "rank": None,
        "float_params": 10,
        "bits_per_weight": 3.5,
        "code_bits": 3,
        "sample": sample,
        "ppl": {"text": ppl},
        "ppl_tokens": {"text": 100},
        "weight_rel_error": 0.1,
        "zero_shot_mean": correct.count("1") / len(correct),
        "seconds": 1.0,
        "task/acc": correct.count("1") / len(correct),
        "task/items": len(correct),
        "task/correct": correct,
    }


def test_identical_answers_differ_by_exactly_zero():
    a = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert paired_bootstrap(a, a.clone()) == (0.0, 0.0, 0.0)


def test_a_model_right_on_every_item_the_other_misses_is_separated():
    g = torch.Generator().manual_seed(0)
    b = (torch.rand(400, generator=g) < 0.5).double()
    a = b.clone()
    a[torch.nonzero(b == 0)[:40, 0]] = 1.0  # a answers 40 more items, misses none that b gets
    delta, low, high = paired_bootstrap(a, b)
    assert delta == pytest.approx(0.1) and 0 < low < delta < high


def test_the_bootstrap_is_deterministic_for_a_seed():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(2, 300, generator=g) < 0.5).double()
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)


def test_unequal_item_lists_are_refused():
    with pytest.raises(ValueError, match="equal 1-D"):
        paired_bootstrap(torch.zeros(3), torch.zeros(4))


def test_item_scores_average_the_runs_and_need_every_run_recorded():
    runs = [{"t/correct": "10"}, {"t/correct": "11"}]
    assert item_scores(runs, ["t"]).tolist() == [1.0, 0.5]
    assert item_scores(runs + [{}], ["t"]) is None


def test_a_collapsed_row_is_the_geometric_mean_and_marked():
    rows = aggregate([_record("nf", s, p, "1010") for s, p in enumerate([1e4, 1e6, 1e8])])
    (row,) = rows
    assert row["ppl_collapsed"]["text"] and row["ppl_std"]["text"] is None
    assert row["ppl"]["text"] == pytest.approx(1e6) and row["log_ppl"]["text"] == pytest.approx(math.log(1e6))


def test_a_healthy_row_keeps_its_arithmetic_mean():
    (row,) = aggregate([_record("nf", s, p, "1010") for s, p in enumerate([20.0, 22.0])])
    assert not row["ppl_collapsed"]["text"] and row["ppl"]["text"] == pytest.approx(21.0)


def test_each_row_is_compared_with_the_best_lords_row_of_its_bits():
    records = [
        _record("lords_calibrated", 0, 20.0, "1111111100"),
        _record("lords_init", None, 40.0, "1111111111"),
        _record("gptq", 0, 25.0, "1111000000"),
        _record("gptq", 0, 25.0, "1111000000", bits=4),  # no LoRDS row at 4 bits: nothing to compare with
    ]
    rows = {(r["method"], r["bits"]): r for r in aggregate(records)}
    assert rows["lords_calibrated", 3]["zero_shot_paired"] is None
    paired = rows["gptq", 3]["zero_shot_paired"]
    assert paired["vs"] == "lords_calibrated" and paired["delta"] == pytest.approx(-0.4) and paired["items"] == 10
    assert rows["lords_init", 3]["zero_shot_paired"]["delta"] == pytest.approx(0.2)
    assert rows["gptq", 4]["zero_shot_paired"] is None


def test_layer_errors_are_zero_for_the_float_model_and_exact_for_a_perturbed_layer():
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.tables.layer_errors import layer_output_errors

    model = tiny_llama()
    other = tiny_llama()
    name = "model.layers.1.mlp.down_proj"
    with torch.no_grad():
        other.get_submodule(name).weight.mul_(1.25)  # (W − 1.25 W) X = −0.25 W X
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(0))
    errors = layer_output_errors(model, other, ids)
    assert len(errors) == 14 and "lm_head" not in errors
    assert errors[name] == pytest.approx(0.25, rel=1e-4)
    assert max(v for k, v in errors.items() if k != name) < 1e-6


def test_a_calibrated_lords_layer_errs_less_than_nearest_rounding_on_held_out_tokens():
    from lords import BlockwiseConfig, LordsConfig, RefineConfig, quantize_
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.tables.layer_errors import layer_output_errors

    g = torch.Generator().manual_seed(0)
    calib, held = torch.randint(0, 512, (2, 1, 128), generator=g)
    model, nf, lords = tiny_llama(), tiny_llama(), tiny_llama()
    quantize_(nf, BlockwiseConfig(bits=3, block_size=32), progress=False)
    refine = RefineConfig(steps=40, objective="act_diag")
    quantize_(lords, LordsConfig(bits=3, block_size=32, refine=refine), calib_ids=calib, progress=False)
    nf_err, lords_err = (layer_output_errors(model, m, held) for m in (nf, lords))
    assert sum(lords_err.values()) < sum(nf_err.values())


def test_a_calibration_size_sweep_names_its_rows_and_keeps_the_default_rows_keys():
    from lords_pipelines.tables.rows import load_spec, overrides, table_rows

    spec = load_spec("ptq_calib")
    keys = [r.key for r in table_rows(spec)]
    assert "lords_calibrated_b3_bs64_T500_r1_s0" in keys  # the 2,048-token row: ptq_bits's own key
    assert "lords_calibrated_b3_bs64_T500_r1_s2_c16384" in keys
    assert "gptq_b3_bs64_T0_r1_s0_c98304" in keys and "gptq_b3_bs64_T0_r1_s1_c98304" not in keys
    row = next(r for r in table_rows(spec) if r.key.endswith("_c16384") and r.method == "lords_gptq")
    assert "quant.calib_tokens=16384" in overrides(spec, row)


def test_rows_at_two_calibration_sizes_aggregate_apart():
    small = [_record("lords_calibrated", s, 30.0, "10") for s in range(2)]
    large = [_record("lords_calibrated", s, 20.0, "11") | {"calib_tokens": 16384} for s in range(2)]
    rows = {r["calib_tokens"]: r for r in aggregate(small + large)}
    assert rows[None]["ppl"]["text"] == 30.0 and rows[16384]["ppl"]["text"] == 20.0
