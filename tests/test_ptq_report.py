"""The main job's front door: its rows come from one spec, and a bad command line stops before any model loads,
with one line and exit status 2, writing nothing."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lords_pipelines.tables.ptq_report import compose_row, load_spec, row_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_every_row_of_the_spec_composes_a_valid_ptq_run(tmp_path):
    spec = load_spec("ptq_smollm2")
    for method in spec.methods:
        s = compose_row(row_overrides(spec, method, None if method == "fp" else 3), tmp_path)
        assert s.eval.perplexity_tokens == spec.eval.tokens
        if method == "fp":
            assert s.quant is None
        else:
            assert s.quant.bits == 3 and s.quant.block_size == spec.block_sizes[0]


def test_rows_differ_by_method_and_objective_only(tmp_path):
    spec = load_spec("ptq_smollm2")
    nf_cal = compose_row(row_overrides(spec, "nf_calibrated", 3, "act"), tmp_path).quant
    lords_cal = compose_row(row_overrides(spec, "lords_calibrated", 3, "act"), tmp_path).quant
    lords_init = compose_row(row_overrides(spec, "lords_init", 3), tmp_path).quant
    assert nf_cal.refine == lords_cal.refine and nf_cal.refine.objective == "act"
    assert nf_cal.refine.steps == spec.refine.steps and nf_cal.refine.lr == spec.refine.lr
    assert lords_init.refine is None and type(lords_init) is type(lords_cal)


@pytest.mark.parametrize(
    "args,says",
    [
        (["quant.bitz=3"], "quant.bitz"),
        (["quant.block_size=0"], "quant.block_size"),
        (["quant.bits=4"], "--bits"),
        (["quant=nf"], "--spec"),
        (["quant.refine.objective=act"], "--objectives"),
        (["--objectives", "hessian"], "--objectives"),
    ],
    ids=["unknown-key", "bad-value", "rewrites-bits", "rewrites-method", "rewrites-objective", "bad-objective"],
)
def test_a_bad_command_line_exits_2_with_one_line_before_any_work(tmp_path, args, says):
    run_dir = tmp_path / "run"
    t = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "lords_pipelines.tables.ptq_report", "--run-dir", str(run_dir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and lines[0].startswith("config error: ")
    assert time.time() - t < 15  # composing every row's config, no model load (about 2 s on 2 idle cores)
    assert not run_dir.exists()
