"""``outputs/reports/scale.json`` carries the issue's three figures, each labelled, and is what the generator makes of
the committed measurements today (regenerate with ``python -m benchmarks.scale.report``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.scale.report import build

REPORTS = Path(__file__).resolve().parents[1] / "outputs" / "reports"
KEYS = ("ptq_8b_minutes", "ptq_peak_gb", "speedup_2gpu")


def test_scale_json_carries_the_three_figures_each_labelled_measured_or_extrapolated():
    record = json.loads((REPORTS / "scale.json").read_text())
    for key in KEYS:
        assert isinstance(record[key], float) and record[key] > 0
        assert record[f"{key}_is"].split(":")[0] in ("measured", "extrapolated")


def test_the_committed_report_is_what_the_committed_measurements_give():
    record = json.loads((REPORTS / "scale.json").read_text())
    fresh = build(REPORTS)
    assert {k: fresh[k] for k in KEYS} == {k: record[k] for k in KEYS}
    assert fresh["model"] == record["model"]


def test_training_speedups_pair_rows_of_one_run_strategy_and_workload_only():
    from benchmarks.scale.scale_bench import pairs, render

    row = dict(stage="qat", workload="w", steps=30, strategy="ddp")
    rows = [
        row | dict(run="a", devices=1, tokens_per_s=100.0),
        row | dict(run="a", devices=2, tokens_per_s=150.0),
        row | dict(run="b", devices=1, tokens_per_s=80.0),  # its 2-GPU partner was cut by a time limit
        row | dict(run="b", devices=2, tokens_per_s=160.0, strategy="fsdp"),
    ]  # another strategy: no partner
    assert [(p["run"], p["speedup"]) for p in pairs(rows)] == [("a", 1.5)]
    table = render(rows)
    assert (
        "| a | ddp | qat | w | 2 | — | 150 | 1.50 | 30 | — |" in table
        and "| b | fsdp | qat | w | 2 | — | 160 | — | 30 | — |" in table
    )


def test_a_multi_gpu_row_pairs_with_the_nearest_earlier_one_gpu_row_of_its_label():
    from benchmarks.scale.scale_bench import pairs

    row = dict(stage="peft", workload="w", steps=20, strategy="fsdp", run="same day")
    rows = [
        row | dict(devices=1, tokens_per_s=50.0),  # an earlier call's, its 2-GPU partner cut by a time limit
        row | dict(devices=1, tokens_per_s=100.0),
        row | dict(devices=2, tokens_per_s=170.0),
    ]
    assert [p["speedup"] for p in pairs(rows)] == [1.7]


def test_the_gpu_link_is_read_from_gpu0s_row_not_the_header():
    from benchmarks.scale.scale_bench import link_of

    topo = "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\nGPU0\t X \tNV18\t0-31\t0\nGPU1\tNV18\t X \t0-31\t0\n"
    assert link_of(topo) == "NV18" and link_of("") is None


def test_make_reproduce_scale_refuses_without_two_gpus_and_names_what_runs_here():
    import subprocess
    import sys

    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("on a 2-GPU machine the target would run the benchmarks")
    res = subprocess.run(
        ["make", "-s", "reproduce-scale", f"GPU_PY={sys.executable}"],
        cwd=REPORTS.parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and "reproduce-scale needs 2 CUDA GPUs" in res.stderr
    assert "benchmarks.scale.report" in res.stderr and "stream_bench" not in res.stdout


def test_allreduce_bench_times_a_gradient_on_two_gloo_processes_and_rank_zero_writes_it(tmp_path):
    import subprocess
    import sys

    from benchmarks.scale.allreduce_bench import bus_gb_per_s

    assert bus_gb_per_s(10**9, 1.0, 2) == 1.0 and bus_gb_per_s(10**9, 1.0, 4) == 1.5  # NCCL-tests' 2(n-1)/n factor
    out = tmp_path / "ar.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "benchmarks.scale.allreduce_bench",
            "--backend",
            "gloo",
            "--floats",
            "4096",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["floats"] == 4096 and row["ranks"] == 2 and row["ms"] > 0
