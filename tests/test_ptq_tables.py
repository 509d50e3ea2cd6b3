"""The PTQ tables: their rows pair every LoRDS setting with its block-wise baseline, each calibrated row runs on
disjoint calibration samples, and a table's Hydra multirun journals every row, logs it, draws the table and
resumes from its journal; a filter that selects no row stops in one line before anything loads."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lords import BlockwiseConfig, LoftQConfig, LordsConfig, MixedPrecisionConfig
from lords_pipelines.tables.ptq import quant_config
from lords_pipelines.tables.rows import load_spec, table_rows

ROOT = Path(__file__).resolve().parents[1]
MINI = (
    "defaults: [common]\nbits: [3]\nblock_sizes: [32]\nmethods: [nf, lords_calibrated]\nrules: {}\n"
    "eval: {tokens: 128, task_limit: 2, batch_size: 4}\ncalib: {tokens: 64, samples: 2}\n"
    "refine: {steps: 2, lr: 0.01}\n"
)


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


def test_a_table_multirun_journals_logs_and_draws_every_row_and_a_rerun_runs_none(
    tmp_path, model_dir, run_table, capsys
):
    spec = tmp_path / "mini.yaml"
    spec.write_text(MINI)
    args = [f"table={spec}", f"spec.model={model_dir}", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'out'}"]
    run_table(*args)
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
    assert (tmp_path / "run" / "mini.md").read_text() == (tmp_path / "out" / "mini.md").read_text()
    journal = tmp_path / "run" / "mini" / "rows.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    keys = [r["key"] for r in records]
    assert keys == [r.key for r in table_rows(load_spec(str(spec)))] and {r["eval_tokens"] for r in records} == {128}
    for key in keys:  # each row is a run of the logger group (CSV here): its numbers and its settings
        logged = (tmp_path / "run" / "mini" / "jobs" / key / "csv" / "version_0" / "metrics.csv").read_text()
        assert "final/ppl/licenses" in logged.splitlines()[0]
    capsys.readouterr()
    run_table(*args)
    assert capsys.readouterr().out.count("already, skipped") == 4
    assert journal.read_text().count("\n") == 4  # nothing ran again
    # A spec grown since its runs draws what its journal holds and names the rows not run yet.
    spec.write_text(spec.read_text().replace("methods: [nf, lords_calibrated]", "methods: [nf, lords_calibrated, int]"))
    run_table(*args, "render=true", multirun=False)
    md = (tmp_path / "out" / "mini.md").read_text()
    assert "Not run yet: 1 rows" in md and "`int_b3_bs32_T0_r1`" in md


def test_every_row_of_a_multirun_is_an_offline_wandb_run_of_the_table_s_group(tmp_path, model_dir):
    """The default logger: a real ``python -m lords_pipelines.stages.table --multirun``, wandb offline."""
    from lords_pipelines.stages.wandb_offline import read_offline_run

    spec = tmp_path / "mini.yaml"
    spec.write_text(MINI.replace("[nf, lords_calibrated]", "[nf]").replace("task_limit: 2", "tasks: []"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_DIR=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wcfg"))
    cmd = [sys.executable, "-m", "lords_pipelines.stages.table", "--multirun", f"table={spec}"]
    cmd += [f"spec.model={model_dir}", f"run_dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = tmp_path / "run" / "mini" / "jobs"
    assert sorted(p.name for p in jobs.iterdir()) == ["fp_bNone_bsNone_T0_r1", "nf_b3_bs32_T0_r1"]
    run = read_offline_run(jobs / "nf_b3_bs32_T0_r1" / "wandb")
    assert run["group"] == "table-mini" and run["job_type"] == "table" and run["config"]["method"] == "nf"
    assert run["summary"]["ppl/licenses"] > 1 and run["summary"]["float_params"] > 0
    assert (tmp_path / "run" / "mini.md").is_file()


@pytest.mark.slow  # about 30 s on 2 cores (a QAT stage run per row); the stage itself is tested in CI
def test_qat_rows_train_through_the_qat_stage_and_are_scored_like_ptq_rows(tmp_path, model_dir, run_table):
    spec = tmp_path / "qat_mini.yaml"
    spec.write_text(
        "defaults: [qat]\nbits: [3]\nblock_sizes: [32]\n"
        "methods: [nf, blockwise_qat, lords_qat, lords_qat_calibrated]\nrules: {}\nextra: []\n"
        "eval: {tokens: 128, tasks: []}\ncalib: {tokens: 64, samples: 1}\nrefine: {steps: 2, lr: 0.01}\n"
        "qat: {distinct_tokens: 256, tokens: 192, window: 32, batch_size: 2, val_every: 2, log_every: 1}\n"
    )
    run_table(f"table={spec}", f"spec.model={model_dir}", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'out'}")
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


@pytest.mark.parametrize(
    "args,says",
    [
        (["table=qat", "only=lords_qatx"], "only='lords_qatx' selects no rows of the table; its rows look like"),
        (["table=peft", "only=nonexistent_"], "selects no task_method_ pairs of the table; its task_method_ pairs"),
        (["table=ptq_bits", "row=nf_b5"], "row='nf_b5' is not a row of the table"),
        (["table=ptq_bits,qat"], "table=ptq_bits,qat: one value per table command"),
        (["table=ptq_bitz"], "table='ptq_bitz': no conf/tables/ptq_bitz.yaml"),
        (["table=ptq_bits", "bogus=1"], "bogus=1: unknown key"),
    ],
    ids=["ptq-filter", "peft-filter", "unknown-row", "two-tables", "unknown-table", "unknown-key"],
)
def test_a_bad_table_command_exits_2_with_one_line_before_any_work(tmp_path, args, says):
    """A mistyped filter names what it could have matched instead of running nothing; nothing loads or is written."""
    t = time.time()
    cmd = [sys.executable, "-m", "lords_pipelines.stages.table", "--multirun", *args, f"run_dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("config error: "), done.stderr[-2000:]
    assert says in lines[0]
    assert time.time() - t < 30 and not (tmp_path / "run").exists()  # no model load (about 5 s on 2 idle cores)
