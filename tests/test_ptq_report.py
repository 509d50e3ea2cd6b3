"""The main job: its rows come from one spec and build their quant configs as every PTQ table does, its multirun
picks the calibrated objective at the first width and reuses it, and a bad command line stops before any model
loads, with one line and exit status 2, writing nothing."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lords_pipelines.tables.ptq_report import compose_row, plan, row_overrides
from lords_pipelines.tables.rows import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = ["spec.model=tiny-llama", "+spec.eval.tokens=128", "+spec.eval.heldout_calib_tokens=64"]
TINY += ["+spec.refine.steps=2", "+spec.block_sizes=[16]", "+spec.calib.tokens=256"]


def test_every_row_of_the_spec_composes_a_valid_ptq_run(tmp_path):
    spec = load_spec("ptq_smollm2")
    for method in spec.methods:
        s = compose_row(row_overrides(spec, method, None if method == "fp" else 3), tmp_path)
        assert s.eval.perplexity_tokens == spec.eval.tokens
        if method == "fp":
            assert s.quant is None
        else:
            assert s.quant.bits == 3 and s.quant.block_size == spec.block_sizes[0]
            assert s.quant.calib_tokens == 2048 and s.quant.seed == 0  # the quant groups' defaults: unchanged


def test_rows_differ_by_method_and_objective_only(tmp_path):
    spec = load_spec("ptq_smollm2")
    nf_cal = compose_row(row_overrides(spec, "nf_calibrated", 3, "act"), tmp_path).quant
    lords_cal = compose_row(row_overrides(spec, "lords_calibrated", 3, "act"), tmp_path).quant
    lords_init = compose_row(row_overrides(spec, "lords_init", 3), tmp_path).quant
    lords_refined = compose_row(row_overrides(spec, "lords_refined", 3, "act"), tmp_path).quant
    assert nf_cal.refine == lords_cal.refine and nf_cal.refine.objective == "act"
    assert nf_cal.refine.steps == spec.refine.steps and nf_cal.refine.lr == spec.refine.lr
    assert lords_init.refine is None and type(lords_init) is type(lords_cal)
    assert lords_refined.refine.objective == "weight"  # a data-free row keeps its own objective


def test_the_jobs_try_every_objective_at_the_first_width_and_reuse_the_pick_after():
    jobs = plan(load_spec("ptq_smollm2"))
    assert list(jobs)[:3] == ["fp_16bit", "lords_calibrated_act_diag_3bit", "lords_calibrated_act_3bit"]
    assert jobs["nf_calibrated_3bit"] == ("nf_calibrated", 3, "<picked>")
    assert jobs["lords_calibrated_4bit"] == ("lords_calibrated", 4, "<picked>") and len(jobs) == 1 + 6 + 5


def test_the_main_job_multirun_on_the_tiny_llama_draws_its_table(tmp_path, run_table):
    run_table("table=ptq_smollm2", *TINY, "+spec.bits=[3]", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'out'}")
    rows = json.loads((tmp_path / "out" / "ptq_smollm2.json").read_text())
    assert [r["method"] for r in rows] == [
        "fp",
        "nf",
        "nf_calibrated",
        "lords_init",
        "lords_refined",
        "lords_calibrated",
    ]
    picked = rows[-1]["objective"]
    assert set(rows[-1]["val_ppl"]) == {"act_diag", "act"} and rows[-1]["val_ppl"][picked] == min(
        rows[-1]["val_ppl"].values()
    )
    assert rows[2]["objective"] == picked and rows[4]["objective"] == "weight"
    md = (tmp_path / "run" / "ptq_smollm2.md").read_text()
    assert "| 3 | lords_calibrated |" in md and f"→ `{picked}`" in md
    journal = tmp_path / "run" / "ptq_smollm2" / "rows.jsonl"
    assert len(journal.read_text().splitlines()) == 7
    for job in ("fp_16bit", "nf_calibrated_3bit"):  # every row a ptq stage run with its logger's output
        assert (tmp_path / "run" / "ptq_smollm2" / "jobs" / job / "csv").is_dir()


@pytest.mark.parametrize(
    "args,says",
    [
        (["+spec.block_sizes=[0]"], "quant.block_size"),
        (["+spec.objectives=[hessian]"], "spec.objectives: 'hessian'"),
        (["+spec.bits=[5]"], "quant.bits"),
        (["only=lords_calibrated_8bit"], "selects no rows"),
    ],
    ids=["bad-block", "bad-objective", "bad-bits", "filter-selects-nothing"],
)
def test_a_bad_command_line_exits_2_with_one_line_before_any_work(tmp_path, args, says):
    run_dir = tmp_path / "run"
    t = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "lords_pipelines.stages.table", "-m", "table=ptq_smollm2", f"run_dir={run_dir}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and lines[0].startswith("config error: ")
    assert time.time() - t < 30  # composing every row's config, no model load (about 5 s on 2 idle cores)
    assert not run_dir.exists()
