"""The PTQ tables: their rows pair every LoRDS setting with its block-wise baseline, each calibrated row runs on
disjoint calibration samples, and the runner writes the reports and resumes from its journal."""

import json

import pytest
import torch

from lords import BlockwiseConfig, LoftQConfig, LordsConfig, MixedPrecisionConfig
from lords_pipelines.tables.ptq import main, quant_config
from lords_pipelines.tables.rows import load_spec, table_rows


@pytest.fixture
def model_dir(tmp_path):
    """A tiny random Llama saved as a model folder with its offline tokenizer."""
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer

    path = tmp_path / "model"
    tiny_llama(seed=0).save_pretrained(path)
    bpe_tokenizer(512).save_pretrained(path)
    return path


def test_every_lords_row_has_a_blockwise_row_refined_the_same_way_at_the_same_bits():
    spec = load_spec("ptq_bits")
    rows = table_rows(spec)
    have = {(r.method, r.bits, r.block_size, r.rule, r.steps) for r in rows}
    pairs = {"lords_calibrated": "nf_calibrated", "lords_refined": "blockwise_refined", "lords_init": "nf"}
    for r in rows:
        if r.method in pairs:
            assert (pairs[r.method], r.bits, r.block_size, r.rule, r.steps) in have, r.key
    calibrated = [r for r in rows if r.method.endswith("calibrated")]
    assert calibrated and all(r.sample in (0, 1, 2) for r in calibrated)
    assert {r.bits for r in rows if r.rule} == {2.5, 2.25} and {r.rule for r in rows if r.rule} == {
        "loftq",
        "sensitivity",
    }


def test_rank_ablation_sets_lords_ranks_beside_block_sizes_of_the_same_floats():
    rows = [r for r in table_rows(load_spec("ptq_rank_ablation")) if r.method != "fp"]
    assert sorted((r.rank_scale, r.block_size) for r in rows if r.method == "lords_refined") == [
        (0.5, 64),
        (1, 64),
        (2, 64),
        (4, 64),
    ]
    assert sorted(r.block_size for r in rows if r.method == "blockwise_refined") == [16, 32, 64, 128]
    # The same pairs on the calibrated objective, each over the three calibration samples.
    assert sorted({(r.rank_scale, r.block_size) for r in rows if r.method == "lords_calibrated"}) == [
        (0.5, 64),
        (1, 64),
        (2, 64),
        (4, 64),
    ]
    assert sorted({r.block_size for r in rows if r.method == "nf_calibrated"}) == [16, 32, 64, 128]
    assert all(r.sample in (0, 1, 2) for r in rows if r.method.endswith("calibrated"))


@pytest.mark.parametrize("index", [1, 7, 20, 45])
def test_rows_build_the_library_configs_they_name(index):
    spec = load_spec("ptq_bits")
    row = table_rows(spec)[index]
    config = quant_config(spec, row)
    leaf = config.base if isinstance(config, MixedPrecisionConfig) else config
    kind = {"lords": LordsConfig, "loftq": LoftQConfig}.get(spec.method_defs[row.method].quant, BlockwiseConfig)
    assert type(leaf) is kind and leaf.block_size == row.block_size
    assert (config.bits if row.rule else leaf.bits) == row.bits
    assert (leaf.refine.steps if leaf.refine else 0) == row.steps


def test_runner_writes_the_reports_and_resumes_from_its_journal(tmp_path, model_dir, capsys):
    spec = tmp_path / "mini.yaml"
    spec.write_text(
        "defaults: [common]\nbits: [3]\nblock_sizes: [32]\nmethods: [nf, lords_calibrated]\nrules: {}\n"
        "eval: {tokens: 128, task_limit: 2, batch_size: 4}\ncalib: {tokens: 64, samples: 2}\n"
        "refine: {steps: 2, lr: 0.01}\n"
    )
    args = ["--model", str(model_dir), "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]
    main([str(spec), *args])
    rows = json.loads((tmp_path / "out" / "mini.json").read_text())
    assert [r["method"] for r in rows] == ["fp", "nf", "lords_calibrated"]
    lords = rows[2]
    assert lords["samples"] == 2 and len(lords["runs"]) == 2 and set(lords["ppl"]) == {"licenses", "kjv_genesis"}
    for key in ("model", "bits", "block_size", "rank", "float_params", "bits_per_weight", "zero_shot_mean"):
        assert key in lords
    assert (lords["refine_steps"], lords["steps"], lords["tokens"]) == (2, 0, 0)  # refined, not trained
    assert (tmp_path / "out" / "mini.png").stat().st_size > 0 and "lords_calibrated" in (
        tmp_path / "out" / "mini.md"
    ).read_text()
    capsys.readouterr()
    main([str(spec), *args])
    assert "4 already in" in capsys.readouterr().out
    # A spec grown since its runs renders what its journal holds and names the rows not run yet.
    spec.write_text(spec.read_text().replace("methods: [nf, lords_calibrated]", "methods: [nf, lords_calibrated, int]"))
    main([str(spec), *args, "--render"])
    assert (
        "Not run yet: 1 rows" in (tmp_path / "out" / "mini.md").read_text()
        and "`int_b3_bs32_T0_r1`" in (tmp_path / "out" / "mini.md").read_text()
    )


@pytest.mark.slow  # about 30 s on 2 cores (a QAT stage run per row); the stage itself is tested in CI
def test_qat_rows_train_through_the_qat_stage_and_are_scored_like_ptq_rows(tmp_path, model_dir):
    spec = tmp_path / "qat_mini.yaml"
    spec.write_text(
        "defaults: [qat]\nbits: [3]\nblock_sizes: [32]\n"
        "methods: [nf, blockwise_qat, lords_qat, lords_qat_calibrated]\nrules: {}\nextra: []\n"
        "eval: {tokens: 128, tasks: []}\ncalib: {tokens: 64, samples: 1}\nrefine: {steps: 2, lr: 0.01}\n"
        "qat: {distinct_tokens: 256, tokens: 192, window: 32, batch_size: 2, val_every: 2, log_every: 1}\n"
    )
    main([str(spec), "--model", str(model_dir), "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    rows = {r["method"]: r for r in json.loads((tmp_path / "out" / "qat_mini.json").read_text())}
    records = [json.loads(line) for line in (tmp_path / "run" / "qat_mini" / "rows.jsonl").read_text().splitlines()]
    qat = {r["method"]: r for r in records if r["method"].endswith("_qat")}
    assert set(qat) == {"blockwise_qat", "lords_qat"}
    for r in qat.values():
        assert r["train_steps"] == 3 and r["train_tokens"] == 192 and len(r["curves"]["train/loss"]) == 3
        assert 0 < r["weight_rel_error"] < 1 and r["float_params"] > 0
    assert qat["lords_qat"]["float_params"] < qat["blockwise_qat"]["float_params"]
    assert set(rows["lords_qat"]["ppl"]) == {"licenses", "kjv_genesis"}
    assert rows["lords_qat"]["trainable_floats"] > 0 and rows["lords_qat"]["tokens"] == 192  # the table's JSON
    assert (rows["lords_qat_calibrated"]["refine_steps"], rows["lords_qat_calibrated"]["steps"]) == (2, 3)
    calibrated = next(r for r in records if r["method"] == "lords_qat_calibrated")  # from the refined PTQ model
    assert calibrated["steps"] == 2 and calibrated["lr_scale"] == 1e-4 and calibrated["train_steps"] == 3
    assert (tmp_path / "out" / "qat_mini_curves.png").stat().st_size > 0


def test_rows_name_the_gpu_by_cuda_s_own_name(monkeypatch):
    """On a CUDA machine each row records ``torch.cuda.get_device_name()`` (the GPU path runs here on a stub)."""
    from lords_pipelines.tables.ptq import device_name

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert device_name() == "NVIDIA H200"


def test_an_only_that_selects_nothing_stops_before_any_work(tmp_path):
    """A mistyped ``--only`` names what it could have matched instead of running nothing."""
    from lords_pipelines.tables.peft import main as peft_main

    with pytest.raises(SystemExit, match="selects no rows.*lords_init_b3"):
        main(["qat", "--only", "lords_qatx", "--run-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="selects no task_method_ pairs.*lords_roman_lords_peft_"):
        peft_main(["peft", "--only", "nonexistent_", "--run-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # no journal, no spec written
