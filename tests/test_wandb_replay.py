"""A table's recorded QAT curves replay into offline wandb runs: one run per trained row, the steps in order, the
row's settings as config and its final metrics as summary."""

import json

import pytest

pytest.importorskip("wandb")

from lords_pipelines.stages.wandb_offline import read_offline_run  # noqa: E402
from lords_pipelines.tables.wandb_replay import history, main  # noqa: E402


def test_train_and_val_losses_of_one_step_land_together_in_step_order():
    curves = {"train/loss": [[8, 3.0], [0, 4.0]], "val/loss": [[8, 3.5]]}
    assert history(curves) == [(0, {"train/loss": 4.0}), (8, {"train/loss": 3.0, "val/loss": 3.5})]


def test_each_trained_row_becomes_an_offline_run_with_its_curves(tmp_path):
    rows = [
        {"key": "nf_b3_bs64_T0_r1", "method": "nf", "bits": 3, "ppl": {"licenses": 50.0}},
        {
            "key": "lords_qat_b3_bs64_T0_r1",
            "method": "lords_qat",
            "bits": 3,
            "lr_scale": 1e-3,
            "ppl": {"licenses": 30.0},
            "lords_kjv_cloze/acc": 0.5,
            "curves": {"train/loss": [[0, 4.0], [8, 3.0]], "val/loss": [[8, 3.5]]},
        },
    ]
    journal = tmp_path / "qat.jsonl"
    journal.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    main([str(journal), "--dir", str(tmp_path / "w")])
    runs = sorted((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # the PTQ row has no curves
    run = read_offline_run(runs[0])
    assert run["group"] == "qat-table" and run["job_type"] == "qat" and run["config"]["lr_scale"] == 1e-3
    assert [h["train/loss"] for h in run["history"]] == [4.0, 3.0] and run["history"][1]["val/loss"] == 3.5
    assert run["summary"]["ppl/licenses"] == 30.0 and run["summary"]["lords_kjv_cloze/acc"] == 0.5
